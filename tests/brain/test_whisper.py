"""Whisper: a supervisor's note mid-call reaches the next request to the model (an OpenAI-protocol test double over
real HTTP, brain on a real NATS) right after the system prompt, and is never spoken."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from voice_brain.conversation import CallHistory, HistoryLimits
from voice_brain.prompting import system_prompt
from voice_brain.service import BrainService
from voice_brain.settings import BrainSettings
from voice_runtime.bus import Bus
from voice_schemas import events

from .calls import Call, make_agent
from .fake_openai import FakeOpenAI, Script

NOTE = "Offer the croissant deal before anything else."


@pytest.fixture
def bus(private_bus: Bus) -> Bus:
    return private_bus


@pytest.fixture
async def brain(private_nats_url: str, bus: Bus, openai_double: FakeOpenAI) -> AsyncIterator[BrainService]:
    openai_double.reset(Script(text="We have fresh bread today."))
    svc = BrainService(
        BrainSettings(nats_url=private_nats_url, llm_base_url=openai_double.base_url, llm_first_token_timeout_s=2.0)
    )
    await svc.start()
    yield svc
    await svc.stop()


async def _turn(call: Call, turn_id: str, text: str) -> list[events.ReplyChunk]:
    await call.pub(events.TranscriptFinalized(utterance_id=turn_id, text=text, speech_end_wall_ms=1.0), turn_id=turn_id)
    chunks = [e.data for e in await call.wait(events.ReplyChunk, turn_id, final=True)]
    await call.pub(events.PlayoutFinished(heard_chunks=list(range(len(chunks)))), turn_id=turn_id)
    await call.wait(events.TurnCompleted, turn_id)
    return chunks


@pytest.mark.integration
async def test_a_whisper_changes_the_next_request_and_is_never_spoken(
    bus: Bus, brain: BrainService, openai_double: FakeOpenAI
) -> None:
    agent = await make_agent(bus, system_prompt="Be a baker.")
    async with Call(bus, agent) as call:
        await call.wait(events.ReplyChunk, "greeting")
        await _turn(call, "t1", "What do you have?")
        first = openai_double.requests[-1]["messages"]
        assert not any(NOTE in str(m["content"]) for m in first)

        whisper = await call.pub(events.SupervisorWhispered(text=NOTE, from_user="user:sup"))
        await call.pub(events.SupervisorWhispered(text=NOTE, from_user="user:sup"), event_id=whisper.id)  # redelivery
        await _turn(call, "t2", "Anything else?")
        sent = openai_double.requests[-1]["messages"]
        # the fixed system prompt first (the provider's prompt cache keeps matching it), then the note, once
        assert sent[0] == {"role": "system", "content": system_prompt(agent)}
        assert sent[1]["role"] == "system" and sent[1]["content"].endswith(NOTE)
        assert sum(NOTE in str(m["content"]) for m in sent) == 1
        assert sent[-1] == {"role": "user", "content": "Anything else?"}

        await _turn(call, "t3", "Thanks.")  # followed from the next reply on: still there a turn later
        assert openai_double.requests[-1]["messages"][1] == sent[1]
        spoken = [e.data.text for e in call.of(events.ReplyChunk)]
        completed = [e.data.agent_text for e in call.of(events.TurnCompleted)]
        assert spoken and not any("croissant" in t for t in spoken + completed)


@pytest.mark.unit
def test_supervisor_notes_are_bounded_and_cut() -> None:
    h = CallHistory(call_id="CA1", tenant_id="t", agent_id="a", agent_version=1)
    limits = HistoryLimits(supervisor_notes=3, supervisor_note_chars=1_000)
    for i in range(5):
        assert h.add_supervisor_note(f"w{i}", f"note {i} " + "x" * 2_000)
        h.compact(limits)
    assert not h.add_supervisor_note("w4", "again")  # a redelivery
    assert [n["id"] for n in h.supervisor_notes] == ["w2", "w3", "w4"]
    assert all(len(n["text"]) <= 1_000 for n in h.supervisor_notes)
    prompt = h.prompt("P")
    assert prompt[0] == {"role": "system", "content": "P"} and [m["role"] for m in prompt[1:4]] == ["system"] * 3
