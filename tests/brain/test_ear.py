"""Replies made for the ear: the fixed prompt prefix, the bounded window, sentence caps and the first clause."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from voice_brain.chat import Delta, ToolCall
from voice_brain.chunking import SentenceChunker
from voice_brain.conversation import SUMMARY_TITLE, SUPERVISOR_NOTE, CallHistory, HistoryLimits, SentChunk
from voice_brain.prompting import VOICE_INSTRUCTION, system_prompt
from voice_brain.reply import stream_reply
from voice_schemas import AgentConfig, events

pytestmark = pytest.mark.unit


def history() -> CallHistory:
    return CallHistory(call_id="c1", tenant_id="t1", agent_id="a1", agent_version=1)


def caller(h: CallHistory, turn_id: str, text: str) -> None:
    assert h.add_caller_turn(turn_id, 0, events.TranscriptFinalized(utterance_id=turn_id, text=text))


def answer(h: CallHistory, turn_id: str, text: str) -> None:
    h.record_chunk(turn_id, SentChunk(index=0, text=text, final=True))
    h.settle(turn_id, [0], cleared=False)
    h.forget(turn_id)


# ---------------------------------------------------------------- the fixed prefix
def test_the_system_prompt_is_fixed_per_agent_and_kind_of_call() -> None:
    agent = AgentConfig(id="a", tenant_id="t", system_prompt="Be a baker.  ")
    assert system_prompt(agent) == f"Be a baker.\n\n{VOICE_INSTRUCTION}" == system_prompt(agent)
    assert "one to three short sentences" in VOICE_INSTRUCTION and "tool result" in VOICE_INSTRUCTION
    assert system_prompt(agent, text_only=True) == "Be a baker.  "  # a text chat: no instruction for speech
    terse = agent.model_copy(update={"llm": agent.llm.model_copy(update={"concise": False})})
    assert system_prompt(terse) == "Be a baker.  "


def test_the_prefix_stays_identical_while_knowledge_whispers_and_the_window_change() -> None:
    """Every completion of the call starts with the same message, and a turn's prompt extends the previous turn's
    prompt (minus the previous turn's knowledge) so the LLM server only evaluates what is new."""
    fixed = "Be a baker.\n\n" + VOICE_INSTRUCTION
    h = history()
    prompts: list[list[dict[str, Any]]] = []
    for i in range(4):
        caller(h, f"t{i}", f"Question {i}?")
        if i == 2:
            assert h.add_supervisor_note("w1", "Offer the croissant.")
        h.note_knowledge(f"t{i}", f"Knowledge for turn {i}.", [])
        prompts.append(h.prompt(fixed))
        answer(h, f"t{i}", f"Answer {i}.")
    assert all(p[0] == {"role": "system", "content": fixed} for p in prompts)
    # the turn's knowledge right before the turn's caller words, at the end
    assert [m["content"] for m in prompts[1][-2:]] == ["Knowledge for turn 1.", "Question 1?"]
    assert prompts[1][:-2] == [m for m in prompts[0] if "Knowledge" not in m["content"]] + [
        {"role": "assistant", "content": "Answer 0."}]  # the previous prompt, extended
    assert prompts[2][1] == {"role": "system", "content": SUPERVISOR_NOTE + "Offer the croissant."}
    assert prompts[3][:-2] == [m for m in prompts[2] if "Knowledge" not in m["content"]] + [
        {"role": "assistant", "content": "Answer 2."}]
    # knowledge given for the completion wins over what the turn stored
    caller(h, "t9", "And one more?")
    h.note_knowledge("t9", "Stored.", [])
    assert h.prompt(fixed, "Given.")[-2:] == [{"role": "system", "content": "Given."},
                                             {"role": "user", "content": "And one more?"}]


def test_knowledge_stays_before_the_caller_words_in_a_tool_round_and_a_call_has_text_content() -> None:
    h = history()
    caller(h, "t1", "Where is my order?")
    h.note_knowledge("t1", "Orders ship in two days.", [])
    h.record_tool_round("t1", [("tc1", "check_order", {"order": "4711"})], {"tc1": '{"status": "shipped"}'})
    p = h.prompt("P")
    assert [m["role"] for m in p] == ["system", "system", "user", "assistant", "tool"]
    assert p[1]["content"] == "Orders ship in two days."
    assert p[3]["content"] == ""  # never null: llama.cpp's server refuses an assistant message without content


# ---------------------------------------------------------------- the bounded window
def test_the_window_is_bounded_in_turns_and_characters_and_trimmed_in_steps() -> None:
    limits = HistoryLimits(window_messages=100, window_chars=100_000, window_turns=6, trim_to=0.5)
    h = history()
    starts = []
    for i in range(20):
        caller(h, f"t{i}", f"Question number {i}?")
        h.compact(limits)
        starts.append((h.messages[0]["content"], len(h.summary)))
        answer(h, f"t{i}", f"Answer {i}.")
        h.compact(limits)
        assert sum(m["role"] == "user" for m in h.messages) <= 6
    # over 6 turns the window drops to 3 at once: its start (and the summary) then holds for four turns
    changes = sum(a != b for a, b in itertools.pairwise(starts))
    assert changes == 4  # in 20 turns (turn by turn without the step: 14)
    assert h.summary_text() is not None and h.summary_text().startswith(SUMMARY_TITLE)  # type: ignore[union-attr]
    h2 = history()
    for i in range(30):
        caller(h2, f"t{i}", "x" * 90 + "?")
        h2.compact(HistoryLimits(window_chars=500, trim_to=0.5))
        assert sum(len(m["content"]) for m in h2.messages) <= 500
    before = h2.model_dump()
    h2.compact(HistoryLimits(window_chars=500, trim_to=0.5))
    assert h2.model_dump() == before  # idempotent


# ---------------------------------------------------------------- the first clause
def test_the_first_clause_goes_out_before_its_sentence_ends() -> None:
    c = SentenceChunker(first_clause_chars=24)
    assert c.push_chunks("Sure, ") == []  # too short to stand alone
    assert c.push_chunks("your order left our warehouse on Monday, and it") == [
        ("Sure, your order left our warehouse on Monday,", False)]
    assert c.push_chunks(" should arrive by Friday, I think. We") == [
        ("and it should arrive by Friday, I think.", True)]
    assert c.push_chunks(" ship 1,000 parcels a day, every day") == []  # only the first chunk is a clause
    assert c.flush() == "We ship 1,000 parcels a day, every day"
    plain = SentenceChunker()
    assert plain.push("Your order left our warehouse on Monday, and it ") == []  # off by default


async def deltas(text: str, calls: tuple[ToolCall, ...] = (), step: int = 3,
                 seen: list[int] | None = None) -> AsyncIterator[Delta]:
    for i in range(0, len(text), step):
        if seen is not None:
            seen.append(i)
        yield Delta(text=text[i:i + step])
    if calls:
        yield Delta(tool_calls=calls)


async def test_the_first_clause_is_the_first_chunk_and_carries_the_timings() -> None:
    sent: list[SentChunk] = []

    async def emit(c: SentChunk) -> None:
        sent.append(c)

    await stream_reply(deltas("Your order left our warehouse on Monday, and it should arrive by Friday."), emit,
                       apology="sorry", first_clause_chars=24)
    assert [c.text for c in sent] == ["Your order left our warehouse on Monday,", "and it should arrive by Friday."]
    assert [c.final for c in sent] == [False, True]
    assert sent[0].timings is not None and sent[0].timings.llm_first_sentence_ms is not None


# ---------------------------------------------------------------- caps
async def test_a_reply_stops_after_max_sentences_and_the_model_is_not_read_further() -> None:
    sent: list[SentChunk] = []
    seen: list[int] = []
    ran: list[tuple[ToolCall, ...]] = []

    async def emit(c: SentChunk) -> None:
        sent.append(c)

    async def tools(calls: tuple[ToolCall, ...], say: Any) -> AsyncIterator[Delta] | None:
        ran.append(calls)
        return None

    text = "We open at eight, every single day of the week. We close at six. We bake bread. We sell cake. " * 5
    outcome = await stream_reply(deltas(text, (ToolCall("lookup"),), seen=seen), emit, apology="sorry",
                                 max_sentences=2, first_clause_chars=12, tools=tools)
    # the first clause is not a sentence: two sentences after it, then the empty final chunk
    assert [c.text for c in sent] == ["We open at eight,", "every single day of the week.", "We close at six.", ""]
    assert sent[-1].final and outcome.chunks == 4 and outcome.error is None
    assert len(seen) < len(text) // 3 / 4  # closed early: most of the completion was never read
    assert ran == []  # no tool round past the cap


async def test_a_reply_under_the_cap_is_whole_and_its_tools_run() -> None:
    sent: list[SentChunk] = []
    ran: list[tuple[ToolCall, ...]] = []

    async def emit(c: SentChunk) -> None:
        sent.append(c)

    async def tools(calls: tuple[ToolCall, ...], say: Any) -> AsyncIterator[Delta] | None:
        ran.append(calls)
        return deltas("It shipped on Monday.")

    await stream_reply(deltas("Let me check.", (ToolCall("lookup"),)), emit, apology="sorry", max_sentences=3,
                       tools=tools)
    assert [c.text for c in sent] == ["Let me check.", "It shipped on Monday."] and len(ran) == 1
