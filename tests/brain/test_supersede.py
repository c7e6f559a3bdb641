"""A newer caller turn supersedes an unfinished reply: the old reply stops and is closed with a final chunk (so
downstream playout closes it), on the replica streaming it and across replicas (the call's latest turn lives in
the KV history, which the streaming replica checks before each chunk)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from voice_brain.chat import ChatLimits
from voice_brain.service import BrainService
from voice_brain.settings import BrainSettings
from voice_runtime.memory import InMemoryBus
from voice_runtime.ports import Stoppable
from voice_schemas import Envelope, events
from voice_schemas.streams import ConsumerDef

from .calls import Call, make_agent
from .fakes import FakeChatProvider, FakeReply

pytestmark = pytest.mark.unit

STORY = " ".join(f"This is sentence number {n} of a long story." for n in range(1, 9))  # 8 sentences, slowly
SLOW = ChatLimits(first_token_timeout_s=1.0, total_timeout_s=20.0)  # the whole story fits: only a supersede stops it
QUICK = FakeReply(content="Sure, I can help with that.")


class Replica(BrainService):
    """One brain replica. Replicas share one durable consumer, which gives each message to one of them; the
    in-memory bus gives every consumer every message, so ``takes`` decides here which replica gets which."""

    def __init__(self, settings: BrainSettings, chat: FakeChatProvider, takes: Callable[[Envelope[Any]], bool]):
        super().__init__(settings, chat=chat)
        self.takes = takes

    async def consume(self, d: ConsumerDef, handler: Callable[[Envelope[Any]], Any]) -> Stoppable:
        async def routed(env: Envelope[Any]) -> None:
            if self.takes(env):
                await handler(env)

        return await super().consume(d, routed)


def settings() -> BrainSettings:
    return BrainSettings(nats_url="nats://unused:4222", llm_base_url="http://platform-llm.test/v1",
                         shutdown_grace_s=1.0)


@pytest.fixture
async def bus() -> InMemoryBus:
    return InMemoryBus("test")


@pytest.fixture
async def replicas(bus: InMemoryBus) -> AsyncIterator[tuple[FakeChatProvider, FakeChatProvider]]:
    """Two replicas: the second takes every event of turn ``tB``, the first everything else."""
    slow = FakeChatProvider(limits=SLOW, default=FakeReply(content=STORY, token_delay_s=0.03))
    quick = FakeChatProvider(default=QUICK)
    one = Replica(settings(), slow, takes=lambda env: env.turn_id != "tB")
    two = Replica(settings(), quick, takes=lambda env: env.turn_id == "tB")
    await one.start(bus)
    await two.start(bus)
    yield slow, quick
    await two.stop()
    await one.stop()


def texts(call: Call, turn_id: str) -> list[events.ReplyChunk]:
    return [e.data for e in call.of(events.ReplyChunk, turn_id)]


async def supersede(bus: InMemoryBus) -> Call:
    """Turn tA streams its long story; once its first sentence is out, the caller speaks again (turn tB)."""
    agent = await make_agent(bus)
    call = Call(bus, agent)
    await call.__aenter__()
    await call.wait(events.ReplyChunk, "greeting")
    await call.pub(events.TranscriptFinalized(utterance_id="u1", text="Tell me a story"), turn_id="tA")
    await call.wait(events.ReplyChunk, "tA")
    await call.pub(events.TranscriptFinalized(utterance_id="u2", text="Actually, when do you open?"), turn_id="tB")
    return call


def assert_closed_early(chunks: list[events.ReplyChunk]) -> None:
    """The superseded reply stopped mid-story and ended with one empty final chunk, indices without a gap."""
    assert chunks[-1].final and chunks[-1].text == "" and sum(c.final for c in chunks) == 1
    spoken = [c.text for c in chunks[:-1]]
    assert 1 <= len(spoken) < 8 and all(t.startswith("This is sentence number") for t in spoken)
    assert [c.index for c in chunks] == list(range(len(chunks)))


async def test_a_newer_turn_on_the_same_replica_closes_the_superseded_reply(bus: InMemoryBus) -> None:
    llm = FakeChatProvider(limits=SLOW, default=FakeReply(content=STORY, token_delay_s=0.03))
    llm.replies["Actually, when do you open?"] = QUICK
    brain = BrainService(settings(), chat=llm)
    await brain.start(bus)
    try:
        call = await supersede(bus)
        b = await call.wait(events.ReplyChunk, "tB", final=True)
        assert b[0].data.text == "Sure, I can help with that."
        await call.wait(events.ReplyChunk, "tA", final=True)
        await bus.settle()
        assert_closed_early(texts(call, "tA"))
        await call.__aexit__()
        assert not bus.dead_letters
    finally:
        await brain.stop()


async def test_a_newer_turn_on_another_replica_stops_and_closes_the_reply(
        bus: InMemoryBus, replicas: tuple[FakeChatProvider, FakeChatProvider]) -> None:
    slow, quick = replicas
    call = await supersede(bus)
    b = await call.wait(events.ReplyChunk, "tB", final=True)
    assert [c.data.text for c in b] == ["Sure, I can help with that."]
    await call.wait(events.ReplyChunk, "tA", final=True, timeout=5)
    await bus.settle()
    a = texts(call, "tA")
    assert_closed_early(a)
    assert len(slow.requests) == 1 and len(quick.requests) == 1
    # what the caller heard of the superseded reply is what the next prompts carry
    heard = len(a) - 1
    await call.pub(events.PlayoutStarted(first_audio_wall_ms=1.0), turn_id="tA")
    await call.pub(events.PlayoutFinished(heard_chunks=list(range(heard))), turn_id="tA")
    done = (await call.wait(events.TurnCompleted, "tA"))[0].data
    assert done.interrupted and done.agent_text == " ".join(c.text for c in a[:-1])
    await call.__aexit__()
    assert not bus.dead_letters
