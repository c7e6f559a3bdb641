"""The conversation of one call as pure operations: turns, chunks, what the caller heard, the end."""

from __future__ import annotations

from typing import Any

import pytest
from voice_brain.conversation import (
    GREETING,
    PENDING_APPROVAL,
    SUMMARY_TITLE,
    CallHistory,
    HeldToolCall,
    HistoryLimits,
    ReplyTimings,
    SentChunk,
    turn_completed,
)
from voice_schemas import events

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000.0  # a wall-clock instant, ms


def history() -> CallHistory:
    return CallHistory(call_id="c1", tenant_id="t1", agent_id="a1", agent_version=1)


def transcript(text: str = "When do you open?", **kw: Any) -> events.TranscriptFinalized:
    return events.TranscriptFinalized(utterance_id="u1", text=text, **kw)


def speak(h: CallHistory, turn_id: str, *sentences: str, final: bool = True) -> None:
    for i, s in enumerate(sentences):
        h.record_chunk(turn_id, SentChunk(index=i, text=s, final=final and i == len(sentences) - 1))


def assistant_messages(h: CallHistory, turn_id: str) -> list[str]:
    return [m["content"] for m in h.messages if m.get("turn_id") == turn_id and m["role"] == "assistant"]


def test_greeting_is_recorded_once() -> None:
    h = history()
    assert h.greet("Hi, this is the bakery.", T0)
    assert not h.greet("Hi, this is the bakery.", T0 + 5)  # a redelivered CallAnswered
    assert assistant_messages(h, GREETING) == ["Hi, this is the bakery."]
    assert h.turns[GREETING].reply_done and h.turns[GREETING].first_sentence_wall_ms == T0


def test_redelivered_transcript_adds_nothing() -> None:
    h = history()
    assert h.add_caller_turn("t1", 0, transcript())
    assert not h.add_caller_turn("t1", 0, transcript())
    assert [m["content"] for m in h.messages if m["role"] == "user"] == ["When do you open?"]
    assert list(h.turns) == ["t1"]


def test_stale_epoch_empty_text_and_ended_call_add_no_turn() -> None:
    h = history()
    assert h.add_caller_turn("t2", 2, transcript())
    assert not h.add_caller_turn("t1", 1, transcript("an older transcript"))
    assert not h.add_caller_turn("t3", 2, transcript("   "))
    h.end()
    assert not h.add_caller_turn("t4", 3, transcript("hello?"))
    assert list(h.turns) == ["t2"] and h.epoch == 2


def test_caller_turn_keeps_its_timing() -> None:
    h = history()
    h.add_caller_turn("t1", 0, transcript(speech_end_wall_ms=T0, start_ms=1000, end_ms=2500, stt_ms=80.0,
                                          end_of_turn_ms=300.0))
    t = h.turns["t1"]
    assert t.caller_ended_at is not None and t.caller_started_at is not None
    assert t.caller_started_at < t.caller_ended_at and (t.stt_ms, t.end_of_turn_ms) == (80.0, 300.0)


def test_interruption_mid_sentence_keeps_only_the_heard_sentences() -> None:
    h = history()
    h.add_caller_turn("t1", 0, transcript("Tell me a story"))
    speak(h, "t1", "Once upon a time there was a baker.", "She baked bread every day.", final=False)
    h.mark_heard("t1", 0)  # the first sentence played; the second was cut mid-sentence by a barge-in
    done = h.settle("t1", heard_chunks=[0], cleared=True)
    assert done is not None and done.interrupted and done.completed
    assert h.heard_text(done) == "Once upon a time there was a baker."
    assert assistant_messages(h, "t1") == ["Once upon a time there was a baker."]
    # the next prompt carries what the caller heard, not what the model wrote
    assert h.prompt("Be a baker.")[-1] == {"role": "assistant", "content": "Once upon a time there was a baker."}


def test_a_mark_arriving_after_the_barge_in_report_changes_nothing() -> None:
    h = history()
    h.add_caller_turn("t1", 0, transcript("Tell me a story"))
    speak(h, "t1", "Once upon a time there was a baker.", "She baked bread every day.", final=False)
    h.settle("t1", heard_chunks=[0], cleared=True)
    h.mark_heard("t1", 1)  # late mark of a chunk that was cleared
    h.note_first_audio("t1", T0)
    t = h.turns["t1"]
    assert t.heard_chunks == [0] and t.first_audio_wall_ms is None
    again = h.settle("t1", heard_chunks=[0, 1], cleared=False)  # a redelivered report: the same turn, unchanged
    assert again is not None and again.heard_chunks == [0] and again.interrupted
    assert assistant_messages(h, "t1") == ["Once upon a time there was a baker."]
    h.forget("t1")  # its turn.completed is published
    assert h.settle("t1", heard_chunks=[0, 1], cleared=False) is None and "t1" not in h.turns


def test_a_reply_played_to_the_end_is_heard_whole() -> None:
    h = history()
    h.add_caller_turn("t1", 0, transcript())
    speak(h, "t1", "Sure.", "We open at eight.", "")
    done = h.settle("t1", heard_chunks=[0, 1, 2], cleared=False)
    assert done is not None and not done.interrupted
    assert h.heard_text(done) == "Sure. We open at eight."


def test_a_reply_still_streaming_when_playout_ends_is_interrupted() -> None:
    h = history()
    h.add_caller_turn("t1", 0, transcript())
    speak(h, "t1", "Sure.", final=False)
    done = h.settle("t1", heard_chunks=[0], cleared=False)
    assert done is not None and done.interrupted


def test_first_chunk_carries_the_reply_timings_and_final_the_hang_up() -> None:
    h = history()
    h.add_caller_turn("t1", 0, transcript(speech_end_wall_ms=T0))
    timings = ReplyTimings(llm_start_wall_ms=T0 + 10, llm_first_token_ms=120.0, llm_first_sentence_ms=300.0,
                           first_sentence_wall_ms=T0 + 310)
    h.record_chunk("t1", SentChunk(index=0, text="Thanks, goodbye!", final=False, timings=timings))
    h.record_chunk("t1", SentChunk(index=1, text="", final=True, hang_up=True))
    t = h.turns["t1"]
    assert (t.llm_first_token_ms, t.llm_first_sentence_ms, t.first_sentence_wall_ms) == (120.0, 300.0, T0 + 310)
    assert t.reply_done and t.hangup_after and t.chunks == ["Thanks, goodbye!", ""]
    h.note_first_audio("t1", T0 + 400, tts_ms=62.5)
    h.note_first_audio("t1", T0 + 900, tts_ms=10.0)  # only the first report counts
    done = h.settle("t1", heard_chunks=[0, 1], cleared=False)
    assert done is not None
    fact = turn_completed(h, done, T0 + 2000)
    assert fact.latency.voice_to_voice_ms == 400.0 and fact.latency.bus_and_playout_ms == 90.0
    assert fact.latency.llm_first_token_ms == 120.0 and fact.agent_text == "Thanks, goodbye!"
    assert fact.latency.tts_first_audio_ms == 62.5  # tts's stage, handed on by ingress
    assert fact.caller_text == "When do you open?" and not fact.interrupted


def test_end_of_call_completes_the_turns_that_were_speaking() -> None:
    h = history()
    h.add_caller_turn("t1", 0, transcript())
    speak(h, "t1", "Sure.", "We open at eight.")
    h.mark_heard("t1", 0)
    h.add_caller_turn("t2", 0, transcript("And on Sunday?"))  # no reply chunk yet: nothing to complete
    unfinished = h.end()
    assert h.ended and [t.turn_id for t in unfinished] == ["t1"]
    assert unfinished[0].interrupted and h.heard_text(unfinished[0]) == "Sure."
    assert h.end() == []  # a redelivered CallEnded


def test_notes_reach_the_prompt_and_old_messages_move_to_the_summary() -> None:
    h = history()
    for i in range(5):
        h.add_caller_turn(f"t{i}", 0, transcript(f"Question {i}. And some detail that is not kept."))
    h.add_note("The caller pressed the key 1.")
    h.compact(HistoryLimits(window_messages=3))
    prompt = h.prompt("Be a baker.")
    assert prompt[0] == {"role": "system", "content": "Be a baker."}
    assert prompt[1] == {"role": "system", "content": "\n".join(
        [SUMMARY_TITLE, "Caller: Question 0.", "Caller: Question 1.", "Caller: Question 2."])}
    assert prompt[2:] == [{"role": "user", "content": "Question 3. And some detail that is not kept."},
                          {"role": "user", "content": "Question 4. And some detail that is not kept."},
                          {"role": "system", "content": "The caller pressed the key 1."}]


def test_compaction_bounds_the_window_the_summary_and_the_turns() -> None:
    limits = HistoryLimits(window_messages=6, window_chars=400, message_chars=100, summary_chars=300,
                           summary_line_chars=40, turns=3, recent_turn_ids=5)
    h = history()
    h.add_note("x" * 500)  # one long note: cut to message_chars
    h.compact(limits)
    assert len(h.messages[0]["content"]) == 100 and h.messages[0]["content"].endswith("…")
    for i in range(100):
        h.add_caller_turn(f"t{i}", 0, transcript(f"Question number {i} is about the opening hours of the shop?"))
        h.compact(limits)
        assert len(h.messages) <= 6 and sum(len(m["content"]) for m in h.messages) <= 400
        assert sum(len(x) + 1 for x in h.summary) <= 300 and all(len(x) <= 40 for x in h.summary)
        assert len(h.turns) <= 3 and f"t{i}" in h.turns and len(h.recent_turn_ids) <= 5
    summary = h.summary_text()
    assert summary is not None
    # the call's opening lines stay; the middle is dropped (and counted); the latest evicted lines are there
    assert h.summary[0].startswith("Note: xxx") and h.summary[1].startswith("Caller: Question number 0 ")
    assert f"[{h.summary_omitted} more lines omitted]" in summary and h.summary_omitted > 0
    assert h.summary[-1].startswith(f"Caller: Question number {99 - 6} ")
    assert h.knows_turn("t99") and h.knows_turn("t95") and not h.knows_turn("t10")


def test_a_forgotten_turn_is_still_known_to_a_redelivered_transcript() -> None:
    h = history()
    h.greet("Hi, this is the bakery.", T0)
    h.add_caller_turn("t1", 0, transcript())
    speak(h, "t1", "Sure.")
    for turn_id in (GREETING, "t1"):
        assert h.settle(turn_id, heard_chunks=[0], cleared=False) is not None
        h.forget(turn_id)
    assert h.turns == {} and h.recent_turn_ids == [GREETING, "t1"]
    assert not h.add_caller_turn("t1", 0, transcript()) and not h.greet("Hi, this is the bakery.", T0)
    assert [m["content"] for m in h.messages] == ["Hi, this is the bakery.", "When do you open?", "Sure."]


def test_a_newer_turn_supersedes_the_reply_and_its_close_keeps_what_went_out() -> None:
    h = history()
    h.add_caller_turn("t1", 0, transcript("Tell me a story"))
    assert h.record_chunk("t1", SentChunk(index=0, text="Once upon a time there was a baker.", final=False))
    h.add_caller_turn("t2", 0, transcript("Actually, when do you open?"))
    assert h.current_turn == "t2" and h.is_superseded("t1") and not h.is_superseded("t2")
    assert not h.record_chunk("t1", SentChunk(index=1, text="She baked bread.", final=False))  # nothing recorded
    h.close_superseded("t1", 1)
    t = h.turns["t1"]
    assert t.chunks == ["Once upon a time there was a baker.", ""] and t.reply_done and t.interrupted
    done = h.settle("t1", heard_chunks=[0, 1], cleared=False)
    assert done is not None and h.heard_text(done) == "Once upon a time there was a baker."
    h.end()
    assert h.is_superseded("t2")  # the call ended: no reply goes on


# ---------------------------------------------------------------- tools
def held_call(tool_call_id: str = "tc1", turn_id: str = "t1") -> HeldToolCall:
    return HeldToolCall(tool_call_id=tool_call_id, name="book", arguments={"people": 2}, turn_id=turn_id,
                        requested_ms=1.0, deadline_ms=2.0)


@pytest.mark.unit
def test_the_first_decision_on_a_held_call_wins() -> None:
    h = history()
    h.add_caller_turn("t1", 0, transcript("Book a table."))
    h.record_tool_round("t1", [("tc1", "book", {"people": 2})], {"tc1": PENDING_APPROVAL})
    assert h.hold_tool(held_call()) and not h.hold_tool(held_call())
    first = h.decide_tool("tc1", approved=False, decided_by="timeout")
    assert first is not None and first.state == "denied"
    assert h.decide_tool("tc1", approved=True, decided_by="sup") is None  # too late: changes nothing
    assert h.decide_tool("unknown", approved=True, decided_by="sup") is None
    h.tool_result("tc1", '{"ok": false}', "It was not run.")
    tool = [m for m in h.prompt("sys") if m["role"] == "tool"]
    assert tool == [{"role": "tool", "tool_call_id": "tc1", "content": '{"ok": false}'}]
    assert h.held("tc1") is not None and h.held("tc1").state == "done"  # type: ignore[union-attr]


@pytest.mark.unit
def test_a_tool_result_cut_off_from_its_call_by_the_window_is_not_sent() -> None:
    h = history()
    h.add_caller_turn("t1", 0, transcript("Book a table."))
    h.record_tool_round("t1", [("tc1", "book", {})], {"tc1": "{}"})
    h.messages.pop(1)  # the window let go of the assistant message that made the call
    assert not [m for m in h.prompt("sys") if m["role"] == "tool"]


@pytest.mark.unit
def test_held_calls_are_bounded_decided_ones_go_first() -> None:
    h = history()
    for i in range(12):
        h.hold_tool(held_call(f"tc{i}"))
    h.decide_tool("tc5", approved=True, decided_by="s")
    h.tool_result("tc5", "{}", "done")
    h.compact(HistoryLimits(tool_calls=8))
    ids = [x.tool_call_id for x in h.held_tools]
    assert len(ids) == 8 and "tc5" not in ids


@pytest.mark.unit
def test_an_agent_turn_waits_for_the_latest_turn_to_complete() -> None:
    h = history()
    h.add_caller_turn("t1", 0, transcript())
    speak(h, "t1", "We open at eight.")
    assert not h.add_agent_turn("tool-tc1", 0)  # the reply is still playing
    h.settle("t1", [0], cleared=False)
    assert h.add_agent_turn("tool-tc1", 0) and h.current_turn == "tool-tc1"
    assert not h.add_agent_turn("tool-tc1", 0)  # redelivered
