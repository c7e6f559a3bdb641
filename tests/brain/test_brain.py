"""brain against real NATS and an OpenAI-protocol test double of the LLM endpoint."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from voice_brain.service import BrainService
from voice_brain.settings import BrainSettings
from voice_runtime.bus import Bus
from voice_schemas import AgentConfig, events, make, parse, subjects

from .fake_openai import FakeOpenAI, Script

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeOpenAI]:
    f = FakeOpenAI()
    f.start()
    yield f
    f.stop()


@pytest.fixture
async def bus(private_nats_url: str) -> AsyncIterator[Bus]:
    """A NATS of this test's own: a running platform on the shared server would compete for brain's
    durable consumer."""
    b = await Bus.connect(private_nats_url, "test")
    await b.provision()
    yield b
    await b.close()


@pytest.fixture
async def brain(private_nats_url: str, bus: Bus, llm: FakeOpenAI) -> AsyncIterator[BrainService]:
    llm.script = Script()
    llm.requests.clear()
    svc = BrainService(BrainSettings(nats_url=private_nats_url, llm_base_url=llm.base_url,
                                     llm_first_token_timeout_s=1.0))
    await svc.start()
    yield svc
    await svc.stop()


class CallProbe:
    """Starts a call on the bus and collects what brain publishes for it."""

    def __init__(self, bus: Bus, agent: AgentConfig) -> None:
        self.bus, self.agent = bus, agent
        self.call_id = subjects.new_call_id()
        self.events: list[Any] = []
        self._sub: Any = None

    async def __aenter__(self) -> CallProbe:
        async def cb(msg: Any) -> None:
            if ".audio." not in msg.subject:
                self.events.append(parse(msg.data))

        self._sub = await self.bus.nc.subscribe(subjects.call_wildcard(self.call_id), cb=cb)
        await self.pub(events.CallStarted(agent_id=self.agent.id, agent_version=1, channel="test"))
        await self.pub(events.CallAnswered())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._sub.unsubscribe()

    async def pub(self, data: Any, **kw: Any) -> Any:
        env = make(data, tenant_id=self.agent.tenant_id, call_id=self.call_id, **kw)
        await self.bus.publish(env)
        return env

    def of(self, cls: type) -> list[Any]:
        return [e for e in self.events if isinstance(e.data, cls)]

    async def wait(self, cls: type, n: int = 1, timeout: float = 10, pred: Any = None) -> list[Any]:
        for _ in range(int(timeout / 0.05)):
            got = [e for e in self.of(cls) if pred is None or pred(e)]
            if len(got) >= n:
                return got
            await asyncio.sleep(0.05)
        raise AssertionError(f"waited for {n} {cls.__name__}, got {[e.type for e in self.events]}")


async def make_agent(bus: Bus, **kw: Any) -> AgentConfig:
    agent = AgentConfig(id="brain" + subjects.new_id()[:10], tenant_id="t-brain", version=1,
                        first_message="Hi, this is the bakery.", **kw)
    kv = await bus.js.key_value("agents")
    await kv.put(subjects.agent_version_key(agent.id, 1), agent.model_dump_json().encode())
    return agent


async def finish_playout(probe: CallProbe, turn_id: str, chunks: int, cleared: bool = False) -> None:
    await probe.pub(events.PlayoutStarted(first_audio_wall_ms=0), turn_id=turn_id)
    await probe.pub(events.PlayoutFinished(cleared=cleared, heard_chunks=list(range(chunks))), turn_id=turn_id)


async def test_greets_then_answers_in_sentences(bus: Bus, brain: BrainService, llm: FakeOpenAI) -> None:
    agent = await make_agent(bus, system_prompt="Be a baker.")
    async with CallProbe(bus, agent) as p:
        greet = await p.wait(events.ReplyChunk)
        assert greet[0].data.text == "Hi, this is the bakery." and greet[0].turn_id == "greeting"
        await p.pub(events.TranscriptFinalized(utterance_id="u1", text="When do you open?",
                                               speech_end_wall_ms=1.0), turn_id="turn1")
        chunks = await p.wait(events.ReplyChunk, 4)
        turn = [c.data for c in chunks if c.turn_id == "turn1"]
        # sentences go out as soon as they are complete; an empty final chunk closes the turn
        assert [c.text for c in turn] == ["Sure. We open at eight in the morning.", "See you then!", ""]
        assert [c.index for c in turn] == [0, 1, 2] and turn[-1].final and not turn[1].final
        # the first sentence went out before the stream ended (it is not held back)
        sent = llm.requests[-1]["messages"]
        assert sent[0] == {"role": "system", "content": "Be a baker."}
        assert sent[1]["role"] == "assistant" and sent[-1] == {"role": "user", "content": "When do you open?"}
        await finish_playout(p, "turn1", 3)
        done = await p.wait(events.TurnCompleted, pred=lambda e: e.turn_id == "turn1")
        assert done[0].data.agent_text.endswith("See you then!") and not done[0].data.interrupted
        assert done[0].data.latency.llm_first_sentence_ms is not None


async def test_redelivered_transcript_does_not_duplicate_the_turn(bus: Bus, brain: BrainService,
                                                                  llm: FakeOpenAI) -> None:
    agent = await make_agent(bus)
    async with CallProbe(bus, agent) as p:
        await p.wait(events.ReplyChunk)
        env = make(events.TranscriptFinalized(utterance_id="u1", text="Hello?"), tenant_id=agent.tenant_id,
                   call_id=p.call_id, turn_id="t1")
        await bus.publish(env)
        await p.wait(events.ReplyChunk, 1, pred=lambda e: e.turn_id == "t1" and e.data.final)
        # the same fact published again under a new message id (as a redelivery would arrive)
        again = env.model_copy(update={"id": subjects.new_id()})
        await bus.publish(again)
        await asyncio.sleep(1.0)
        assert len([c for c in p.of(events.ReplyChunk) if c.turn_id == "t1"]) == 3
        assert len(llm.requests) == 1


async def test_barge_in_keeps_only_what_was_heard(bus: Bus, brain: BrainService, llm: FakeOpenAI) -> None:
    llm.script = Script(text="One fine sentence here. Two fine sentences here. Three fine sentences here.",
                        token_delay_s=0.15)
    agent = await make_agent(bus)
    async with CallProbe(bus, agent) as p:
        await p.wait(events.ReplyChunk)
        await p.pub(events.TranscriptFinalized(utterance_id="u1", text="Tell me a story"), turn_id="t1")
        await p.wait(events.ReplyChunk, 1, pred=lambda e: e.turn_id == "t1" and e.data.index == 0)
        await p.pub(events.PlayoutStarted(first_audio_wall_ms=0), turn_id="t1")
        await p.pub(events.BargeIn(at_ms=100, speech_ms=400), epoch=1)
        await p.pub(events.PlayoutFinished(cleared=True, heard_chunks=[0]), turn_id="t1")
        done = await p.wait(events.TurnCompleted, pred=lambda e: e.turn_id == "t1")
        assert done[0].data.interrupted and done[0].data.agent_text == "One fine sentence here."
        await asyncio.sleep(1.5)  # the cancelled stream publishes nothing more
        assert len([c for c in p.of(events.ReplyChunk) if c.turn_id == "t1"]) <= 2
        assert not any(c.data.final for c in p.of(events.ReplyChunk) if c.turn_id == "t1")
        h = await brain.history.get(p.call_id)  # type: ignore[union-attr]
        assert h is not None
        assert [m["content"] for m in h.messages if m.get("turn_id") == "t1" and m["role"] == "assistant"] == [
            "One fine sentence here."]


async def test_end_call_tool_hangs_up_after_goodbye(bus: Bus, brain: BrainService, llm: FakeOpenAI) -> None:
    llm.script = Script(text="Thanks for calling, goodbye!", tool="end_call")
    agent = await make_agent(bus)
    async with CallProbe(bus, agent) as p:
        await p.wait(events.ReplyChunk)
        await p.pub(events.TranscriptFinalized(utterance_id="u1", text="That's all, bye"), turn_id="t1")
        hang = await p.wait(events.HangUp)
        assert hang[0].data.after_playout
        t1 = [c.data for c in p.of(events.ReplyChunk) if c.turn_id == "t1"]
        assert t1[0].text == "Thanks for calling, goodbye!" and t1[-1].final
        assert llm.requests[-1]["tools"][0]["function"]["name"] == "end_call"


@pytest.mark.parametrize("script", [Script(status=500), Script(stall_s=3.0)], ids=["http-500", "timeout"])
async def test_llm_failure_is_an_apology_not_dead_air(bus: Bus, brain: BrainService, llm: FakeOpenAI,
                                                      script: Script) -> None:
    llm.script = script
    agent = await make_agent(bus)
    async with CallProbe(bus, agent) as p:
        await p.wait(events.ReplyChunk)
        await p.pub(events.TranscriptFinalized(utterance_id="u1", text="Hello?"), turn_id="t1")
        chunks = await p.wait(events.ReplyChunk, 1, timeout=8, pred=lambda e: e.turn_id == "t1")
        assert chunks[-1].data.final and "Sorry" in chunks[-1].data.text
