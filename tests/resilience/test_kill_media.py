"""kill -9 of the media replica following a call while the caller speaks: another replica takes the call over
(its claim in KV by compare-and-set, when the dead one's heartbeat ages out), rebuilds the turn state from the
caller audio the AUDIO stream kept, and the utterance is captured once; the next one too. Two ``python -m
voice_media`` processes (Silero VAD, smart-turn) on a NATS of the test's own; the caller is piper speech published
as ingress publishes it, in real time."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nats.js.errors import KeyNotFoundError
from voice_devstack.speech import speech_int16
from voice_runtime.bus import Bus
from voice_schemas import CallRecord, Envelope, events, make, parse, subjects
from voice_schemas.audio import H_SEQ, H_TS
from voice_schemas.streams import KV_CALLS

from .procs import start_service, stop_all

pytestmark = pytest.mark.integration
RATE, FRAME = 16_000, 320


@pytest.fixture
def bus(private_bus: Bus) -> Bus:
    return private_bus


@pytest.fixture
def medias(private_nats_url: str, tmp_path: Path) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    procs = {n: start_service("voice_media", tmp_path, n, NATS_URL=private_nats_url)[0]
             for n in ("media-a", "media-b")}
    yield procs
    stop_all(procs.values())


class Caller:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.call_id = subjects.new_call_id()
        self.sent = 0
        self.got: list[Envelope[Any]] = []

    async def start(self) -> None:
        async def keep(msg: Any) -> None:
            self.got.append(parse(msg.data))

        await self.bus.subscribe(events.UtteranceCaptured.subject_for(self.call_id), keep)
        kv = (await self.bus.provision())[KV_CALLS.bucket]
        rec = CallRecord(call_id=self.call_id, tenant_id="t-media", agent_id="default-agent", agent_version=1,
                         channel="test")
        await kv.put(subjects.call_key(self.call_id), rec.model_dump_json().encode())
        await self.bus.publish(make(events.CallStarted(agent_id="default-agent", agent_version=1,
                                                       channel=events.Channel.test),
                                    tenant_id="t-media", call_id=self.call_id))

    async def speak(self, audio: np.ndarray, *, on_frame: Any = None) -> None:
        subject = subjects.audio_in(self.call_id)
        t0 = time.monotonic()
        for i in range(len(audio) // FRAME):
            delay = t0 + (i + 1) * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.bus.publish_nowait(subject, audio[i * FRAME:(i + 1) * FRAME].tobytes(),
                                          {H_SEQ: str(self.sent), H_TS: str(self.sent * 20)})
            self.sent += 1
            if on_frame is not None:
                await on_frame(i)

    def utterances(self) -> list[events.UtteranceCaptured]:
        return [e.data for e in self.got]


async def claim_of(bus: Bus, call_id: str) -> str | None:
    kv = (await bus.provision())[KV_CALLS.bucket]
    try:
        return ((await kv.get(subjects.media_claim_key(call_id))).value or b"").decode() or None
    except KeyNotFoundError:
        return None


def silence(ms: int) -> np.ndarray:
    return np.zeros(ms * RATE // 1000, np.int16)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
async def test_losing_the_media_replica_mid_utterance_hands_the_call_over(
        bus: Bus, medias: dict[str, subprocess.Popen[bytes]], tmp_path: Path, how: signal.Signals) -> None:
    """SIGKILL: taken over once the dead replica's heartbeat ages out; SIGTERM: the stopping replica leaves at
    once and the other takes over without waiting."""
    question = speech_int16("Can you tell me what time you open on Sunday morning?", RATE, deterministic=True)
    second = speech_int16("And do you have parking for the car?", RATE, deterministic=True)
    caller = Caller(bus)
    await caller.start()
    deadline = time.monotonic() + 10
    while (owner := await claim_of(bus, caller.call_id)) is None:
        assert time.monotonic() < deadline, "no media replica claimed the call"
        await asyncio.sleep(0.05)
    logs = {n: (tmp_path / f"{n}.log") for n in medias}
    killed = next(n for n in medias if f'"call_id": "{caller.call_id}"' in logs[n].read_text()
                  or caller.call_id in logs[n].read_text())
    await caller.speak(silence(600))

    killed_at: list[float] = []

    async def watch_claim() -> None:
        while await claim_of(bus, caller.call_id) in (None, owner):
            await asyncio.sleep(0.05)
        killed_at.append(time.monotonic())  # taken over

    async def kill_midway(i: int) -> None:
        if i == len(question) // FRAME // 2:  # halfway through the question
            medias[killed].send_signal(how)
            killed_at.append(time.monotonic())
            asyncio.get_running_loop().create_task(watch_claim())

    await caller.speak(question, on_frame=kill_midway)
    await caller.speak(silence(2500))
    deadline = time.monotonic() + 20
    while not caller.utterances():
        assert time.monotonic() < deadline, "the question was never captured"
        await caller.speak(silence(200))
    assert await claim_of(bus, caller.call_id) not in (None, owner)  # taken over by the other replica
    if len(killed_at) == 2:  # reported, not asserted (no timing assertions in tests)
        print(f"media takeover {killed_at[1] - killed_at[0]:.2f} s after {how.name}")
    await caller.speak(silence(1500))
    (q,) = caller.utterances()  # captured once, by the replica that took over
    assert q.end_ms - q.start_ms >= 1500  # the whole question, not only the half said after the takeover
    await caller.speak(second)
    await caller.speak(silence(2500))
    deadline = time.monotonic() + 20
    while len(caller.utterances()) < 2:
        assert time.monotonic() < deadline, "the next question was not captured"
        await caller.speak(silence(200))
    assert len(caller.utterances()) == 2
