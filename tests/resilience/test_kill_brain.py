"""kill -9 of the brain replica streaming a reply: another replica takes the turn over within the consumer's ack
wait (a live handler sends heartbeats, a dead one does not), and no turn is answered twice. brain runs as real
processes on a NATS of the test's own; the model is the OpenAI-protocol double over HTTP, held mid-reply so the
kill lands while the reply streams. The second replica is paused (SIGSTOP) until the kill, so that the first is
the one replying."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from voice_runtime.bus import Bus
from voice_schemas import events

from ..brain.calls import Call, make_agent
from ..brain.fake_openai import FakeOpenAI, Script
from .procs import start_service, stop_all

pytestmark = pytest.mark.integration


class Brains:
    """brain replicas as processes (``python -m voice_brain``), each killable."""

    def __init__(self, nats_url: str, llm_url: str, logs: Path) -> None:
        self.nats_url, self.llm_url, self.logs = nats_url, llm_url, logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        proc, _ = start_service("voice_brain", self.logs, f"brain-{len(self.procs)}", NATS_URL=self.nats_url,
                                LLM_BASE_URL=self.llm_url, LLM_FIRST_TOKEN_TIMEOUT_S="20", LLM_TOTAL_TIMEOUT_S="30")
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)  # one paused by a test that failed before resuming it
        stop_all(self.procs)


@pytest.fixture
def llm() -> Iterator[FakeOpenAI]:
    f = FakeOpenAI()
    f.start()
    yield f
    f.stop()


@pytest.fixture
def bus(private_bus: Bus) -> Bus:
    return private_bus


@pytest.fixture
def brains(private_nats_url: str, llm: FakeOpenAI, tmp_path: Path) -> Iterator[Brains]:
    b = Brains(private_nats_url, llm.base_url, tmp_path)
    yield b
    b.stop_all()


def chunks(call: Call, turn_id: str) -> list[events.ReplyChunk]:
    return sorted((e.data for e in call.of(events.ReplyChunk, turn_id)), key=lambda c: c.index)


async def held(llm: FakeOpenAI, timeout: float = 20.0) -> None:
    """Until the model's stream is held (it sent the words before ``hold_after_words``)."""
    deadline = time.monotonic() + timeout
    while not llm.holding.is_set():
        assert time.monotonic() < deadline, "the model never reached its hold"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("when", ["after-a-sentence", "before-any-word"])
async def test_killing_the_replica_mid_reply_hands_the_turn_to_another(
        bus: Bus, brains: Brains, llm: FakeOpenAI, when: str) -> None:
    first, second = brains.start(), brains.start()
    second.send_signal(signal.SIGSTOP)  # paused while the first takes the call, so the kill hits the one replying
    await asyncio.sleep(0.6)  # a fetch the second had pending at the server expires (0.5 s)
    agent = await make_agent(bus)
    async with Call(bus, agent) as call:
        await call.wait(events.ReplyChunk, "greeting", timeout=20)
        llm.reset(Script(text="We open at eight. We close at ten. Parking is free.",
                         hold_after_words=4 if when == "after-a-sentence" else 0, hold_s=30.0))
        llm.queue[:] = []
        await call.pub(events.TranscriptFinalized(utterance_id="u1", text="When are you open?"), turn_id="t1")
        await held(llm)
        if when == "after-a-sentence":
            await call.wait(events.ReplyChunk, "t1", timeout=20)  # "We open at eight." went out
        first.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        first.wait(10)
        llm.reset(Script(text="Sorry, we open at eight."))  # what the model says to the replica taking over
        second.send_signal(signal.SIGCONT)
        await call.wait(events.ReplyChunk, "t1", final=True, timeout=30)
        print(f"brain: the turn finished by the other replica {time.monotonic() - killed_at:.2f} s after kill -9")
        got = chunks(call, "t1")
        assert [c.index for c in got] == list(range(len(got)))  # contiguous: nothing doubled, nothing skipped
        assert sum(c.final for c in got) == 1  # answered once
        if when == "after-a-sentence":
            # the caller heard a sentence: the turn is closed where it stopped, never started over
            assert [c.text for c in got] == ["We open at eight.", ""]
            assert len(llm.requests) == 0
        else:
            # nothing was said yet: the turn is answered by the new replica (late, once)
            assert "".join(c.text for c in got).strip() == "Sorry, we open at eight."
        # the call goes on with the new replica
        await call.pub(events.PlayoutFinished(heard_chunks=[c.index for c in got], cleared=False), turn_id="t1")
        await call.wait(events.TurnCompleted, "t1", timeout=20)
        llm.reset(Script(text="Yes, parking is free."))
        await call.pub(events.TranscriptFinalized(utterance_id="u2", text="Is parking free?"), turn_id="t2")
        await call.wait(events.ReplyChunk, "t2", final=True, timeout=20)
        assert chunks(call, "t2")[0].text == "Yes, parking is free."
