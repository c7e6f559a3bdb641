"""brain against real NATS and an OpenAI-protocol test double of the LLM endpoint (the production adapter)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from voice_brain.prompting import system_prompt
from voice_brain.service import BrainService
from voice_brain.settings import BrainSettings
from voice_runtime.bus import Bus
from voice_schemas import events, make, subjects

from .calls import Call, make_agent
from .fake_openai import FakeOpenAI, Script

pytestmark = pytest.mark.integration


@pytest.fixture
async def bus(private_nats_url: str) -> AsyncIterator[Bus]:
    """A NATS of this test's own: a running platform on the shared server would compete for brain's
    durable consumer."""
    b = await Bus.connect(private_nats_url, "test")
    await b.provision()
    yield b
    await b.close()


@pytest.fixture
async def brain(private_nats_url: str, bus: Bus, openai_double: FakeOpenAI) -> AsyncIterator[BrainService]:
    openai_double.reset()
    svc = BrainService(BrainSettings(nats_url=private_nats_url, llm_base_url=openai_double.base_url,
                                     llm_first_token_timeout_s=1.0))
    await svc.start()
    yield svc
    await svc.stop()


async def finish_playout(probe: Call, turn_id: str, chunks: int, cleared: bool = False) -> None:
    await probe.pub(events.PlayoutStarted(first_audio_wall_ms=0), turn_id=turn_id)
    await probe.pub(events.PlayoutFinished(cleared=cleared, heard_chunks=list(range(chunks))), turn_id=turn_id)


async def test_greets_then_answers_in_sentences(bus: Bus, brain: BrainService, openai_double: FakeOpenAI) -> None:
    # the endpoint holds the rest of its stream after the first sentence until the test has seen that sentence
    # on the bus: a brain that held sentences back until the stream ended would see the hold time out
    openai_double.reset(Script(hold_after_words=8))  # "Sure. We open at eight in the morning. " | "See you then!"
    agent = await make_agent(bus, system_prompt="Be a baker.")
    async with Call(bus, agent) as p:
        greet = await p.wait(events.ReplyChunk, "greeting")
        assert greet[0].data.text == "Hi, this is the bakery." and greet[0].turn_id == "greeting"
        await p.pub(events.TranscriptFinalized(utterance_id="u1", text="When do you open?",
                                               speech_end_wall_ms=1.0), turn_id="turn1")
        first = (await p.wait(events.ReplyChunk, "turn1"))[0].data
        # the first sentence was published while the model was still streaming
        assert not openai_double.stream_finished.is_set() and openai_double.hold_timeouts == 0
        assert first.index == 0 and first.text == "Sure. We open at eight in the morning." and not first.final
        openai_double.release.set()
        turn = [c.data for c in await p.wait(events.ReplyChunk, "turn1", final=True)]
        assert openai_double.stream_finished.is_set() and openai_double.hold_timeouts == 0
        # sentences go out as soon as they are complete; an empty final chunk closes the turn
        assert [c.text for c in turn] == ["Sure. We open at eight in the morning.", "See you then!", ""]
        assert [c.index for c in turn] == [0, 1, 2] and turn[-1].final and not turn[1].final
        sent = openai_double.requests[-1]["messages"]
        assert sent[0] == {"role": "system", "content": system_prompt(agent)}
        assert sent[1]["role"] == "assistant" and sent[-1] == {"role": "user", "content": "When do you open?"}
        await finish_playout(p, "turn1", 3)
        done = await p.wait(events.TurnCompleted, "turn1")
        assert done[0].data.agent_text.endswith("See you then!") and not done[0].data.interrupted
        assert done[0].data.latency.llm_first_sentence_ms is not None


async def test_redelivered_transcript_does_not_duplicate_the_turn(bus: Bus, brain: BrainService,
                                                                  openai_double: FakeOpenAI) -> None:
    agent = await make_agent(bus)
    async with Call(bus, agent) as p:
        await p.wait(events.ReplyChunk, "greeting")
        env = make(events.TranscriptFinalized(utterance_id="u1", text="Hello?"), tenant_id=agent.tenant_id,
                   call_id=p.call_id, turn_id="t1")
        await bus.publish(env)
        await p.wait(events.ReplyChunk, "t1", final=True)
        # the same fact published again under a new message id (as a redelivery would arrive)
        again = env.model_copy(update={"id": subjects.new_id()})
        await bus.publish(again)
        await asyncio.sleep(1.0)
        assert len([c for c in p.of(events.ReplyChunk) if c.turn_id == "t1"]) == 3
        assert len(openai_double.requests) == 1


async def test_end_call_tool_hangs_up_after_goodbye(bus: Bus, brain: BrainService, openai_double: FakeOpenAI) -> None:
    openai_double.reset(Script(text="Thanks for calling, goodbye!", tool="end_call"))
    agent = await make_agent(bus)
    async with Call(bus, agent) as p:
        await p.wait(events.ReplyChunk, "greeting")
        await p.pub(events.TranscriptFinalized(utterance_id="u1", text="That's all, bye"), turn_id="t1")
        hang = await p.wait(events.HangUp, "t1")
        assert hang[0].data.after_playout
        t1 = [c.data for c in p.of(events.ReplyChunk) if c.turn_id == "t1"]
        assert t1[0].text == "Thanks for calling, goodbye!" and t1[-1].final
        assert openai_double.requests[-1]["tools"][0]["function"]["name"] == "end_call"


@pytest.mark.parametrize("script", [Script(status=500), Script(stall_s=3.0)], ids=["http-500", "timeout"])
async def test_llm_failure_is_an_apology_not_dead_air(bus: Bus, brain: BrainService, openai_double: FakeOpenAI,
                                                      script: Script) -> None:
    openai_double.reset(script)
    agent = await make_agent(bus)
    async with Call(bus, agent) as p:
        await p.wait(events.ReplyChunk, "greeting")
        await p.pub(events.TranscriptFinalized(utterance_id="u1", text="Hello?"), turn_id="t1")
        chunks = await p.wait(events.ReplyChunk, "t1", final=True, timeout=8)
        assert chunks[-1].data.final and "Sorry" in chunks[-1].data.text


async def test_an_outbound_call_whose_agent_waits_is_not_greeted_but_answered(
    bus: Bus, brain: BrainService, openai_double: FakeOpenAI
) -> None:
    """call.answered with greet false (an outbound call whose agent lets the callee speak first): no greeting; the
    callee's "Hello?" is the first turn."""
    agent = await make_agent(bus, system_prompt="Be a baker.")
    async with Call(bus, agent, greet=False) as p:
        await p.pub(events.TranscriptFinalized(utterance_id="u1", text="Hello?", speech_end_wall_ms=1.0),
                    turn_id="turn1")
        await p.wait(events.ReplyChunk, "turn1", final=True)
        assert not p.of(events.ReplyChunk, "greeting")
