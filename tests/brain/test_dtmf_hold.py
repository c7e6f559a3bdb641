"""The built-in ``send_dtmf`` and ``hold`` tools in brain: the production ``openai`` adapter against a scripted
OpenAI-protocol server over real HTTP; the commands brain publishes for ingress, and what ingress's reports make the
agent do (``tests/ingress/test_dtmf_hold.py`` carries the commands out on a Twilio stream)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from voice_runtime.memory import InMemoryBus
from voice_schemas import events, parse, subjects
from voice_schemas.agent import EndCallTool, HoldTool, SendDtmfTool
from voice_schemas.streams import KV_HISTORY

from .calls import Call, brains, make_agent
from .fake_openai import FakeOpenAI, Script

pytestmark = pytest.mark.integration

Brain = Callable[..., Any]


@pytest.fixture
async def bus() -> InMemoryBus:
    return InMemoryBus("test", max_backoff_s=30.0)


@pytest.fixture
async def brain(bus: InMemoryBus, openai_double: FakeOpenAI) -> AsyncIterator[Brain]:
    openai_double.reset()
    async with brains(bus, openai_double.base_url) as start:
        yield start


class ChatCall(Call):
    """A text chat (channel ``chat``): no keypad, no hold."""

    async def __aenter__(self) -> Call:
        async def collect(msg: Any) -> None:
            self.seen.append(parse(msg.data))

        self._sub = await self.bus.subscribe(subjects.call_wildcard(self.call_id), collect)
        await self.pub(events.CallStarted(agent_id=self.agent.id, agent_version=1, channel="chat"))
        await self.pub(events.CallAnswered())
        return self


def chunks(call: Call, turn_id: str) -> list[str]:
    return [e.data.text for e in sorted(call.of(events.ReplyChunk, turn_id), key=lambda e: e.data.index)]


def spoken(call: Call, turn_id: str) -> list[str]:
    return [t for t in chunks(call, turn_id) if t]


def last_prompt(openai_double: FakeOpenAI) -> str:
    return json.dumps(openai_double.requests[-1]["messages"])


async def history(bus: InMemoryBus, call: Call) -> dict[str, Any]:
    kv = (await bus.provision())[KV_HISTORY.bucket]
    entry = await kv.get(call.call_id)
    return json.loads(entry.value)


async def until_history(bus: InMemoryBus, call: Call, check: Callable[[dict[str, Any]], bool]) -> None:
    """The call's history satisfies ``check`` (brain's handlers run concurrently: wait for the one that matters)."""
    for _ in range(500):
        if check(await history(bus, call)):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the history never got there: {await history(bus, call)}")


async def test_send_dtmf_presses_the_keys_after_the_reply_and_the_model_hears_how_it_went(
        bus: InMemoryBus, brain: Brain, openai_double: FakeOpenAI) -> None:
    await brain()
    agent = await make_agent(bus, tools=[SendDtmfTool(max_digits=6), EndCallTool()])
    # a phone menu asks for a key: the model presses it and says nothing (no "say that again" before the tone)
    openai_double.queue[:] = [Script(text="", tool="send_dtmf", tool_args={"digits": "2#"}), Script(text="")]
    async with Call(bus, agent) as call:
        await call.wait(events.ReplyChunk, "greeting")
        await call.pub(events.TranscriptFinalized(utterance_id="u1", text="For sales press two, then hash."),
                       turn_id="t1")
        (cmd,) = await call.wait(events.SendDtmf, "t1")
        assert cmd.data.digits == "2#" and cmd.data.after_playout and cmd.data.requested_by == "agent"
        assert chunks(call, "t1") == [""]
        (result,) = call.of(events.ToolResultReturned, "t1")
        assert result.data.ok and "will be pressed once you have finished speaking" in result.data.result["status"]
        assert not call.of(events.HangUp, "t1")
        # the tool as the model sees it: the keys, bounded by the tool's max_digits
        (function,) = [t["function"] for t in openai_double.requests[0]["tools"] if t["function"]["name"]
                       == "send_dtmf"]
        assert function["parameters"]["properties"]["digits"]["pattern"] == "^[0-9*#A-D]{1,6}$"
        await call.pub(events.PlayoutFinished(heard_chunks=[0]), turn_id="t1")
        await call.wait(events.TurnCompleted, "t1")

        # ingress reports the keys pressed: the model reads it in its next prompt
        await call.pub(events.DtmfSent(ok=True, keys=2))
        await until_history(bus, call, lambda h: "were pressed" in json.dumps(h["messages"]))
        openai_double.queue[:] = [Script(text="Thanks.")]
        await call.pub(events.TranscriptFinalized(utterance_id="u2", text="Sales, how can I help?"), turn_id="t2")
        await call.wait(events.ReplyChunk, "t2", final=True)
        assert "The 2 key(s) you asked for were pressed" in last_prompt(openai_double)

        # ingress could not press them: the model is told and says so in a turn of its own
        openai_double.queue[:] = [Script(text="I couldn't press the keys, sorry.")]
        await call.pub(events.PlayoutFinished(heard_chunks=[0]), turn_id="t2")
        await call.wait(events.TurnCompleted, "t2")
        failed = await call.pub(events.DtmfSent(ok=False, reason="this kind of call cannot send DTMF"))
        turn = f"dtmf-failed-{failed.id}"
        await call.wait(events.ReplyChunk, turn, final=True)
        assert spoken(call, turn) == ["I couldn't press the keys, sorry."]
        assert "this kind of call cannot send DTMF" in last_prompt(openai_double)


async def test_keys_the_tool_does_not_allow_are_a_tool_error_and_nothing_is_pressed(
        bus: InMemoryBus, brain: Brain, openai_double: FakeOpenAI) -> None:
    await brain()
    agent = await make_agent(bus, tools=[SendDtmfTool(max_digits=4)])
    openai_double.queue[:] = [Script(text="", tool="send_dtmf", tool_args={"digits": "12 34"}),
                              Script(text="", tool="send_dtmf", tool_args={"digits": "123456"}),
                              Script(text="I can't press those.")]
    async with Call(bus, agent) as call:
        await call.wait(events.ReplyChunk, "greeting")
        await call.pub(events.TranscriptFinalized(utterance_id="u1", text="Enter 12 34."), turn_id="t1")
        await call.wait(events.ReplyChunk, "t1", final=True)
        results = call.of(events.ToolResultReturned, "t1")
        assert [r.data.ok for r in results] == [False, False]
        assert all("invalid arguments: digits" in (r.data.error or "") for r in results)
        assert not call.of(events.SendDtmf)


async def test_a_text_chat_has_no_keypad_and_no_hold(bus: InMemoryBus, brain: Brain,
                                                     openai_double: FakeOpenAI) -> None:
    await brain()
    agent = await make_agent(bus, tools=[SendDtmfTool(), HoldTool()])
    openai_double.queue[:] = [Script(text="", tool="send_dtmf", tool_args={"digits": "1"}),
                              Script(text="", tool="hold", tool_args={}),
                              Script(text="I can't do that in a chat.")]
    async with ChatCall(bus, agent) as call:
        await call.wait(events.ReplyChunk, "greeting")
        await call.pub(events.TranscriptFinalized(utterance_id="u1", text="Press 1 and hold."), turn_id="t1")
        await call.wait(events.ReplyChunk, "t1", final=True)
        errors = [r.data.error for r in call.of(events.ToolResultReturned, "t1")]
        assert errors == ["this is a text chat: there is no phone line to press keys on",
                          "this is a text chat: there is no phone line to put on hold"]
        assert not call.of(events.SendDtmf) and not call.of(events.Hold)
        assert spoken(call, "t1") == ["I can't do that in a chat."]  # no hold line either


async def test_hold_says_its_line_then_holds_and_a_supervisor_or_the_limit_takes_the_caller_back(
        bus: InMemoryBus, brain: Brain, openai_double: FakeOpenAI) -> None:
    await brain()
    agent = await make_agent(bus, tools=[HoldTool(line="Please hold while I ask the kitchen.", max_hold_s=120)])
    openai_double.queue[:] = [Script(text="", tool="hold", tool_args={"seconds": 45}), Script(text="")]
    async with Call(bus, agent) as call:
        await call.wait(events.ReplyChunk, "greeting")
        await call.pub(events.TranscriptFinalized(utterance_id="u1", text="Is the soup vegan?"), turn_id="t1")
        (hold,) = await call.wait(events.Hold, "t1")
        assert hold.data.max_s == 45 and hold.data.audio == "tone" and hold.data.after_playout
        assert spoken(call, "t1") == ["Please hold while I ask the kitchen."]
        (result,) = call.of(events.ToolResultReturned, "t1")
        assert result.data.ok and "up to 45 s" in result.data.result["status"]
        await call.pub(events.PlayoutFinished(heard_chunks=[0, 1]), turn_id="t1")
        await call.wait(events.TurnCompleted, "t1")
        await until_history(bus, call, lambda h: h["on_hold"])

        # a supervisor's whisper during the hold: the agent takes the caller back with it
        openai_double.queue[:] = [Script(text="Thanks for holding, the soup is vegan.")]
        whisper = await call.pub(events.SupervisorWhispered(text="Yes, the soup is vegan.", from_user="u-sup"))
        turn = f"whisper-{whisper.id}"
        await call.wait(events.ReplyChunk, turn, final=True)
        assert spoken(call, turn) == ["Thanks for holding, the soup is vegan."]
        await call.pub(events.HoldEnded(reason="resumed", held_s=3.0))  # ingress: the agent spoke again
        await call.pub(events.PlayoutFinished(heard_chunks=[0]), turn_id=turn)
        await call.wait(events.TurnCompleted, turn)
        await until_history(bus, call, lambda h: not h["on_hold"])

        # a hold that runs out: the agent thanks the caller in a turn of its own
        openai_double.queue[:] = [Script(text="", tool="hold", tool_args={}), Script(text="")]
        await call.pub(events.TranscriptFinalized(utterance_id="u2", text="And the bread?"), turn_id="t2")
        (hold2,) = await call.wait(events.Hold, "t2")
        assert hold2.data.max_s == 120  # no seconds given: the tool's limit
        await call.pub(events.PlayoutFinished(heard_chunks=[0, 1]), turn_id="t2")
        await call.wait(events.TurnCompleted, "t2")
        openai_double.queue[:] = [Script(text="Sorry for the wait, I'm still checking.")]
        ended = await call.pub(events.HoldEnded(reason="timeout", held_s=120.0))
        turn = f"hold-ended-{ended.id}"
        await call.wait(events.ReplyChunk, turn, final=True)
        assert "on hold for 120 s" in last_prompt(openai_double)
        # a whisper after the hold ended is only a note again (no turn of its own)
        await call.pub(events.PlayoutFinished(heard_chunks=[0]), turn_id=turn)
        await call.wait(events.TurnCompleted, turn)
        quiet = await call.pub(events.SupervisorWhispered(text="Offer a discount.", from_user="u-sup"))
        await bus.settle()
        assert not call.of(events.ReplyChunk, f"whisper-{quiet.id}")
