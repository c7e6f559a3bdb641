"""Brain in a text chat (channel ``chat``): no playout, so a turn completes once its reply's final chunk is sent;
the reply chunks say ``text_only`` so tts leaves them alone. The service tests run on the in-memory bus and on a
real NATS server (``any_bus``)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from voice_brain.chat import ToolCall
from voice_brain.conversation import GREETING, CallHistory, SentChunk
from voice_brain.service import BrainService
from voice_runtime.ports import BusPort
from voice_schemas import events, parse, subjects

from .calls import Call, make_agent
from .fakes import FakeChatProvider, FakeReply
from .test_service import brain, llm, memory_brain, memory_bus  # noqa: F401 (fixtures; any_bus: conftest)


class ChatCall(Call):
    """A call of channel ``chat``, started and answered as ingress's chat endpoint does."""

    async def __aenter__(self) -> ChatCall:
        async def collect(msg: Any) -> None:
            self.seen.append(parse(msg.data))

        self._sub = await self.bus.subscribe(subjects.call_wildcard(self.call_id), collect)
        await self.pub(events.CallStarted(agent_id=self.agent.id, agent_version=1, channel=events.Channel.chat))
        await self.pub(events.CallAnswered(media_format="text/plain"))
        return self


def _transcript(text: str) -> events.TranscriptFinalized:
    return events.TranscriptFinalized(utterance_id="u", text=text, speech_end_wall_ms=1_700_000_000_000.0)


# ---------------------------------------------------------------- the conversation (pure)
@pytest.mark.unit
def test_text_only_reply_settles_in_full_once_its_final_chunk_is_sent() -> None:
    h = CallHistory(call_id="CAx", tenant_id="t", agent_id="a", agent_version=1, text_only=True)
    assert h.add_caller_turn("t1", 0, _transcript("When do you open?"))
    assert h.turns["t1"].end_of_turn_ms is None and h.turns["t1"].stt_ms is None  # typed: no such stages
    assert h.record_chunk("t1", SentChunk(index=0, text="At eight.", final=False))
    assert h.deliver_text("t1") is None  # not all of it is out yet
    assert h.record_chunk("t1", SentChunk(index=1, text="See you!", final=True))
    done = h.deliver_text("t1")
    assert done is not None and done.completed and not done.interrupted
    assert h.heard_text(done) == "At eight. See you!"
    assert h.messages[-1] == {"role": "assistant", "content": "At eight. See you!", "turn_id": "t1"}
    h.forget("t1")
    assert h.deliver_text("t1") is None  # forgotten: nothing more to complete


@pytest.mark.unit
def test_a_superseded_text_reply_keeps_what_was_sent() -> None:
    h = CallHistory(call_id="CAx", tenant_id="t", agent_id="a", agent_version=1, text_only=True)
    h.add_caller_turn("t1", 0, _transcript("Tell me everything"))
    h.record_chunk("t1", SentChunk(index=0, text="First part.", final=False))
    h.add_caller_turn("t2", 0, _transcript("Stop"))
    h.close_superseded("t1", 1)
    done = h.deliver_text("t1")
    assert done is not None and done.interrupted and h.heard_text(done) == "First part."


@pytest.mark.unit
def test_a_voice_call_keeps_its_stage_latencies() -> None:
    h = CallHistory(call_id="CAx", tenant_id="t", agent_id="a", agent_version=1)
    d = events.TranscriptFinalized(utterance_id="u", text="hi", end_of_turn_ms=120.0, stt_ms=80.0)
    h.add_caller_turn("t1", 0, d)
    assert (h.turns["t1"].end_of_turn_ms, h.turns["t1"].stt_ms) == (120.0, 80.0)


# ---------------------------------------------------------------- the service, on both buses
async def test_chat_turns_complete_when_the_text_is_sent(any_bus: BusPort, brain: BrainService,  # noqa: F811
                                                         llm: FakeChatProvider) -> None:  # noqa: F811
    agent = await make_agent(any_bus, system_prompt="Be a baker.")
    async with ChatCall(any_bus, agent) as call:
        greeting = (await call.wait(events.TurnCompleted, GREETING))[0].data
        assert greeting.agent_text == "Hi, this is the bakery." and greeting.caller_text is None
        assert all(c.data.text_only for c in call.of(events.ReplyChunk, GREETING))
        await call.pub(_transcript("When do you open?"), turn_id="t1")
        done = (await call.wait(events.TurnCompleted, "t1"))[0].data
        assert done.caller_text == "When do you open?" and not done.interrupted
        assert done.agent_text == "Sure. We open at eight in the morning. See you then!"
        assert done.latency.end_of_turn_ms is None and done.latency.stt_ms is None
        assert done.latency.voice_to_voice_ms is None and done.latency.llm_first_sentence_ms is not None
        assert done.caller_started_at is not None and done.agent_started_at is not None
        chunks = call.of(events.ReplyChunk, "t1")
        assert chunks and all(c.data.text_only for c in chunks) and chunks[-1].data.final
        assert not call.of(events.PlayoutFinished)  # nothing played: brain completed the turn on its own
        # the next prompt holds the whole reply as the agent's turn
        await call.pub(_transcript("Thanks"), turn_id="t2")
        await call.wait(events.TurnCompleted, "t2")
        _, _, request = llm.requests[-1]
        assert {"role": "assistant", "content": done.agent_text} in request.messages
        assert len(call.of(events.TurnCompleted, "t1")) == 1
        assert brain.history is not None
        # completed turns are forgotten, as in a voice call (just after turn.completed is published)
        for _ in range(200):
            h = await brain.history.get(call.call_id)
            if h is None or not h.turns:
                break
            await asyncio.sleep(0.02)
        assert h is not None and h.text_only and not h.turns


async def test_voice_calls_still_wait_for_playout(any_bus: BusPort, brain: BrainService,  # noqa: F811
                                                  llm: FakeChatProvider) -> None:  # noqa: F811
    agent = await make_agent(any_bus)
    async with Call(any_bus, agent) as call:
        await call.wait(events.ReplyChunk, GREETING)
        await call.pub(_transcript("When do you open?"), turn_id="t1")
        await call.wait(events.ReplyChunk, "t1", final=True)
        await asyncio.sleep(0.3)
        assert not call.of(events.TurnCompleted)  # neither the greeting nor the turn has played
        assert not any(c.data.text_only for c in call.of(events.ReplyChunk))


# ---------------------------------------------------------------- the service, in memory
async def test_chat_end_call_marks_the_final_chunk(memory_bus: BusPort, memory_brain: BrainService,  # noqa: F811
                                                   llm: FakeChatProvider) -> None:  # noqa: F811
    llm.default = FakeReply(content="Thanks for chatting, goodbye!", tool_calls=(ToolCall("end_call"),))
    agent = await make_agent(memory_bus)
    async with ChatCall(memory_bus, agent) as call:
        await call.wait(events.TurnCompleted, GREETING)
        await call.pub(_transcript("Bye"), turn_id="t1")
        await call.wait(events.HangUp, "t1")
        final = next(c for c in call.of(events.ReplyChunk, "t1") if c.data.final)
        assert final.data.hangup_after
        # the hang-up is known before the turn completes (ingress answers the message with ended=true)
        kinds = [type(e.data) for e in call.seen if e.turn_id == "t1"]
        assert kinds.index(events.ReplyChunk) < kinds.index(events.TurnCompleted) < kinds.index(events.HangUp)


async def test_a_chat_ended_mid_reply_records_the_turn_as_cut_off(memory_bus: BusPort,  # noqa: F811
                                                              memory_brain: BrainService,  # noqa: F811
                                                              llm: FakeChatProvider) -> None:  # noqa: F811
    llm.default = FakeReply(content="One fine sentence here. Two fine sentences here. Three.", token_delay_s=0.05)
    agent = await make_agent(memory_bus)
    async with ChatCall(memory_bus, agent) as call:
        await call.wait(events.TurnCompleted, GREETING)
        await call.pub(_transcript("Talk"), turn_id="t1")
        await call.wait(events.ReplyChunk, "t1")
        await call.pub(events.CallEnded(reason=events.EndReason.caller_hangup))
        done = (await call.wait(events.TurnCompleted, "t1"))[0].data
        # the user gets a reply only once all of it is out: nothing of this one reached them
        assert done.interrupted and done.agent_text == "" and done.caller_text == "Talk"

