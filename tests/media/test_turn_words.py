"""TurnDetector: the pause that starts the likely final transcript (``SpeechPaused``) and the words as a second
end-of-turn signal (``on_transcript``), with synthetic VAD probabilities and a fake media clock (32 ms windows).

Defaults unless a test says otherwise: end_of_turn_ms 600, min_turn_silence_ms 200, speech_stop_ms 160,
pause_ms 64, finished_end_of_turn_ms 350, unfinished_end_of_turn_ms 1200, offset_lag_ms 0 (``driver``)."""

from __future__ import annotations

import pytest
from voice_media.turns import (
    BargeIn,
    Decision,
    RunTurnModel,
    SegmentDiscarded,
    SpeechBegan,
    SpeechEnded,
    SpeechPaused,
    TurnEnded,
    TurnThresholds,
    WordsWeighed,
)

from .test_turns import Driver, W, driver

pytestmark = pytest.mark.unit


def outcomes(d: Driver) -> list[str]:
    return [w.outcome for w in d.of(WordsWeighed)]


def words(d: Driver, finished: bool | None, end_ms: int | None = None, turn_id: str = "turn1") -> list[Decision]:
    """The likely final words of ``turn_id``, their audio decoded up to ``end_ms`` (now by default)."""
    return d.record(d.det.on_transcript(turn_id, d.t if end_ms is None else end_ms, finished))


def model(d: Driver, complete: bool) -> list[Decision]:
    """The turn model answers the latest question."""
    return d.record(d.det.on_turn_model(d.of(RunTurnModel)[-1].request_id, complete))


# ---------------------------------------------------------------- the pause
def test_a_pause_is_reported_once_before_the_segment_ends() -> None:
    d = driver(use_turn_model=False)
    d.speech(640)
    assert d.silence(32) == []
    (paused,) = d.silence(32)  # 64 ms below the stop threshold
    assert paused == SpeechPaused("turn1", at_ms=640, speech_ms=640, epoch=0)
    d.silence(1000)
    assert len(d.of(SpeechPaused)) == 1
    kinds = [type(x) for x in d.out]
    assert kinds.index(SpeechPaused) < kinds.index(SpeechEnded) < kinds.index(TurnEnded)


def test_the_pause_is_dated_back_by_the_vad_tail_and_clamped_to_the_onset() -> None:
    d = driver(use_turn_model=False, offset_lag_ms=64)
    d.silence(320)
    d.speech(640)
    d.silence(64)
    (paused,) = d.of(SpeechPaused)
    assert paused.at_ms == 960 - 64 and paused.speech_ms == 960 - 64 - 320
    d.silence(160)
    (ended,) = d.of(SpeechEnded)
    assert ended.at_ms == paused.at_ms  # the same offset once the segment ends
    short = driver(use_turn_model=False, offset_lag_ms=300, min_turn_speech_ms=0)
    short.silence(320)
    short.speech(128)
    short.silence(64)
    (paused,) = short.of(SpeechPaused)
    assert paused.at_ms == 320 and paused.speech_ms == 0  # never before the onset


def test_speech_resuming_within_the_segment_pauses_again() -> None:
    d = driver(use_turn_model=False)
    d.speech(640)
    d.silence(96)
    d.speech(320)  # back before speech_stop_ms: still one segment
    d.silence(96)
    first, second = d.of(SpeechPaused)
    assert first.at_ms == 640 and second.at_ms == 640 + 96 + 320
    assert first.turn_id == second.turn_id == "turn1"
    assert not d.of(SpeechEnded)


def test_murmur_between_the_thresholds_does_not_pause_again() -> None:
    d = driver(use_turn_model=False)
    d.speech(640)
    d.silence(64)
    d.windows(64, 0.4)  # over stop_threshold, under threshold: the segment goes on, no new voiced speech
    d.silence(64)
    assert len(d.of(SpeechPaused)) == 1


def test_a_new_segment_of_the_same_turn_pauses_again() -> None:
    d = driver(TurnThresholds(end_of_turn_ms=800), use_turn_model=False)
    d.speech(640)
    d.silence(320)  # the segment ends, the turn goes on
    d.speech(320)
    d.silence(64)
    assert [p.turn_id for p in d.of(SpeechPaused)] == ["turn1", "turn1"]
    assert len(d.of(SpeechEnded)) == 1


def test_a_pause_longer_than_the_stop_is_reported_at_the_offset() -> None:
    d = driver(TurnThresholds(min_turn_silence_ms=96), use_turn_model=False, pause_ms=128)  # the stop: 96 ms
    d.speech(640)
    got = d.silence(96)
    assert [type(x) for x in got] == [SpeechPaused, SpeechEnded]
    assert got[0].at_ms == got[1].at_ms == 640  # type: ignore[union-attr]


def test_a_stall_is_no_pause() -> None:
    d = driver(use_turn_model=False)
    d.speech(640)
    d.t += 96
    assert d.record(d.det.tick(d.t)) == []  # 96 ms without audio
    d.speech(64)
    d.silence(64)
    (paused,) = d.of(SpeechPaused)
    assert paused.at_ms == 640 + 96 + 64


def test_no_pause_when_off_for_a_blip_or_while_a_barge_in_is_pending() -> None:
    off = driver(use_turn_model=False, pause_ms=0)
    off.speech(640)
    off.silence(1000)
    assert not off.of(SpeechPaused) and len(off.of(TurnEnded)) == 1

    blip = driver(use_turn_model=False)
    blip.speech(64)  # less voiced speech than min_turn_speech_ms: it will be dropped
    blip.silence(1000)
    assert not blip.of(SpeechPaused) and len(blip.of(SegmentDiscarded)) == 1

    barge = driver(TurnThresholds(min_barge_in_ms=400), use_turn_model=False)
    barge.record(barge.det.playout_started("agent-turn", 0))
    barge.speech(192)
    barge.silence(96)  # a gap inside a suspected barge-in
    assert not barge.of(SpeechPaused)
    barge.speech(256)  # voiced enough: committed, a turn like any other from now on
    assert len(barge.of(BargeIn)) == 1
    barge.silence(64)
    (paused,) = barge.of(SpeechPaused)
    assert paused.epoch == 1 and paused.turn_id == "turn1"


def test_a_turn_cut_at_max_duration_pauses_as_the_new_turn() -> None:
    d = driver(use_turn_model=False, max_utterance_ms=3000)
    d.speech(4000)
    d.silence(64)
    (paused,) = d.of(SpeechPaused)
    first, = d.of(TurnEnded)
    assert first.reason == "max_duration" and paused.turn_id == "turn2"


# ---------------------------------------------------------------- the words
def pause_then_words(d: Driver, finished: bool | None) -> None:
    """640 ms of speech, a pause, the likely final words of it, then silence up to the model's question."""
    d.speech(640)
    d.silence(64)
    assert d.of(SpeechPaused)
    assert words(d, finished) == []  # stored: weighed once the segment ends
    d.silence(160)  # 224 ms of silence: offset at 160, the model is asked at 200


def test_unfinished_words_hold_a_complete_model_answer() -> None:
    d = driver()
    pause_then_words(d, False)
    assert [type(x) for x in model(d, True)] == [WordsWeighed]
    assert outcomes(d) == ["held_unfinished"]
    d.silence(928)  # 1152 ms
    assert not d.of(TurnEnded), "unfinished words keep the turn open past the hangover"
    d.silence(64)
    (turn,) = d.of(TurnEnded)
    assert turn.reason == "silence" and turn.speech_end_ms == 640 and 1200 <= turn.end_of_turn_ms < 1200 + W
    assert outcomes(d) == ["held_unfinished"]


def test_without_words_a_complete_answer_ends_the_turn_at_once() -> None:
    d = driver()
    d.speech(640)
    d.silence(224)
    (turn,) = [x for x in model(d, True) if isinstance(x, TurnEnded)]
    assert turn.reason == "model" and turn.end_of_turn_ms == 224 and not d.of(WordsWeighed)


def test_finished_words_and_a_complete_answer_agree() -> None:
    d = driver()
    pause_then_words(d, True)
    got = model(d, True)
    assert [type(x) for x in got] == [TurnEnded, WordsWeighed]
    assert d.of(TurnEnded)[0].reason == "model" and outcomes(d) == ["agreed"]


def test_finished_words_end_the_turn_when_the_model_says_incomplete() -> None:
    d = driver()
    pause_then_words(d, True)
    assert model(d, False) == []
    d.silence(96)  # 320 ms
    assert not d.of(TurnEnded)
    d.silence(32)  # 352 ms
    (turn,) = d.of(TurnEnded)
    assert turn.reason == "transcript" and turn.speech_end_ms == 640 and 350 <= turn.end_of_turn_ms < 350 + W
    assert outcomes(d) == ["ended_finished"]


def test_finished_words_end_the_turn_when_the_model_is_off_or_silent() -> None:
    off = driver(use_turn_model=False)
    pause_then_words(off, True)
    off.silence(128)
    (turn,) = off.of(TurnEnded)
    assert turn.reason == "transcript" and 350 <= turn.end_of_turn_ms < 350 + W

    unanswered = driver()  # asked, never answers (busy or timed out)
    pause_then_words(unanswered, True)
    unanswered.silence(128)
    assert unanswered.of(TurnEnded)[0].reason == "transcript"


def test_finished_words_arriving_after_the_silence_end_the_turn_at_once() -> None:
    d = driver()
    d.speech(640)
    d.silence(448)
    assert model(d, False) == []
    got = words(d, True, end_ms=704)
    assert [type(x) for x in got] == [TurnEnded, WordsWeighed]
    turn = got[0]
    assert isinstance(turn, TurnEnded) and turn.reason == "transcript" and turn.decided_ms == 640 + 448


def test_unfinished_words_stretch_the_hangover_whatever_the_model() -> None:
    d = driver()
    pause_then_words(d, False)
    assert model(d, False) == []
    d.silence(416)  # 640 ms: past end_of_turn_ms
    assert not d.of(TurnEnded) and outcomes(d) == ["held_unfinished"]
    d.silence(576)
    (turn,) = d.of(TurnEnded)
    assert turn.reason == "silence" and 1200 <= turn.end_of_turn_ms < 1200 + W


def test_unfinished_words_never_shorten_a_longer_agent_hangover() -> None:
    d = driver(TurnThresholds(end_of_turn_ms=2000))
    pause_then_words(d, False)
    d.silence(1600)
    assert not d.of(TurnEnded) and not d.of(WordsWeighed)
    d.silence(256)
    (turn,) = d.of(TurnEnded)
    assert turn.reason == "silence" and turn.end_of_turn_ms >= 2000


def test_unfinished_words_give_way_to_max_duration() -> None:
    d = driver(max_utterance_ms=2000)
    d.speech(1504)
    d.silence(64)
    words(d, False)
    d.silence(480)
    (turn,) = d.of(TurnEnded)
    assert turn.reason == "max_duration" and turn.decided_ms - turn.start_ms >= 2000


def test_the_caller_going_on_after_a_hold_is_counted_and_the_old_words_no_longer_count() -> None:
    d = driver()
    pause_then_words(d, False)
    model(d, True)
    d.silence(480)
    got = d.speech(320)  # "...for four people"
    assert [type(x) for x in got] == [SpeechBegan, WordsWeighed]
    assert outcomes(d) == ["held_unfinished", "held_resumed"]
    d.silence(224)
    (turn,) = [x for x in model(d, True) if isinstance(x, TurnEnded)]  # the old words cover an earlier pause
    assert turn.reason == "model" and turn.turn_id == "turn1" and turn.speech_end_ms == 640 + 704 + 320


def test_newer_finished_words_release_a_held_turn() -> None:
    d = driver()
    pause_then_words(d, False)
    model(d, True)
    d.silence(64)
    got = words(d, True)  # a fuller decode of the same pause
    assert [type(x) for x in got] == [TurnEnded, WordsWeighed]
    assert d.of(TurnEnded)[0].reason == "model" and outcomes(d) == ["held_unfinished", "agreed"]


def test_words_of_an_earlier_pause_are_ignored() -> None:
    d = driver()
    d.speech(640)
    d.silence(64)
    d.speech(320)  # the caller went on before the words came back
    assert words(d, False, end_ms=704) == [WordsWeighed("turn1", "stale")]
    d.silence(224)
    (turn,) = [x for x in model(d, True) if isinstance(x, TurnEnded)]
    assert turn.reason == "model"

    late_after_offset = driver()  # stored while speaking, then speech resumed: checked against the new offset
    pause_then_words(late_after_offset, False)
    late_after_offset.speech(320)
    late_after_offset.silence(224)
    model(late_after_offset, True)
    assert late_after_offset.of(TurnEnded)[0].reason == "model"


def test_words_for_another_or_an_ended_turn_change_nothing() -> None:
    d = driver()
    d.speech(640)
    d.silence(224)
    assert words(d, False, turn_id="other") == [WordsWeighed("other", "late")]
    model(d, True)
    assert d.of(TurnEnded)[0].reason == "model"
    assert words(d, True) == [WordsWeighed("turn1", "late")]
    assert len(d.of(TurnEnded)) == 1


def test_no_words_weigh_nothing() -> None:
    d = driver()
    pause_then_words(d, None)  # an empty transcript
    model(d, True)
    assert d.of(TurnEnded)[0].reason == "model" and not d.of(WordsWeighed)


# ---------------------------------------------------------------- a "complete" before the words (words_wait_ms)
def complete_before_words(words_wait_ms: int = 450) -> tuple[Driver, list[Decision]]:
    """640 ms of speech, 224 ms of silence, then the model's "complete" before any words of the pause."""
    d = driver(words_wait_ms=words_wait_ms)
    d.speech(640)
    d.silence(224)
    return d, model(d, True)


def test_a_complete_answer_before_the_words_waits_for_them_and_unfinished_words_hold() -> None:
    d, got = complete_before_words()
    assert got == [], "no words of this pause yet: 'allergic to' can sound finished"
    d.silence(64)
    assert not d.of(TurnEnded)
    assert [type(x) for x in words(d, False, end_ms=704)] == [WordsWeighed]  # "My daughter is allergic to."
    assert outcomes(d) == ["held_unfinished"]
    d.silence(512)  # 800 ms: past the hangover and the wait
    assert not d.of(TurnEnded)
    d.speech(320)  # "... peanuts and shellfish."
    assert outcomes(d) == ["held_unfinished", "held_resumed"]


def test_a_complete_answer_before_the_words_ends_the_turn_when_finished_words_come() -> None:
    d, _ = complete_before_words()
    d.silence(32)
    got = words(d, True, end_ms=704)
    assert [type(x) for x in got] == [TurnEnded, WordsWeighed]
    turn = got[0]
    assert isinstance(turn, TurnEnded) and turn.reason == "model" and turn.end_of_turn_ms == 256
    assert outcomes(d) == ["agreed"]


def test_a_complete_answer_waits_for_the_words_no_longer_than_the_bound() -> None:
    d, _ = complete_before_words()
    d.silence(192)  # 416 ms
    assert not d.of(TurnEnded)
    d.silence(64)  # 480 ms: no likely final came (stt busy, or it decodes none)
    (turn,) = d.of(TurnEnded)
    assert turn.reason == "model" and 450 <= turn.end_of_turn_ms < 450 + W
    assert outcomes(d) == ["missing"]
    assert words(d, False, end_ms=704) == [WordsWeighed("turn1", "late")]


def test_a_complete_answer_waiting_for_words_ends_at_once_when_the_decode_has_none() -> None:
    d, _ = complete_before_words()
    d.silence(32)
    (turn,) = [x for x in words(d, None, end_ms=704) if isinstance(x, TurnEnded)]  # a cough: no words
    assert turn.reason == "model" and turn.end_of_turn_ms == 256


def test_a_complete_answer_waiting_for_words_ignores_words_of_an_earlier_pause() -> None:
    d = driver(words_wait_ms=450)
    d.speech(640)
    d.silence(64)
    words(d, True, end_ms=704)  # "I would like to book a table" (finished)
    d.speech(320)  # "for"
    d.silence(224)
    model(d, True)
    assert not d.of(TurnEnded), "the words it holds cover the first pause, not this one"
    assert words(d, None, end_ms=704) == [], "no words, and of the earlier pause: still waiting"
    assert not d.of(TurnEnded)
    words(d, False)  # "I would like to book a table for."
    assert outcomes(d) == ["held_unfinished"] and not d.of(TurnEnded)


def test_without_a_wait_a_complete_answer_before_the_words_ends_the_turn() -> None:
    _, got = complete_before_words(0)  # 0: the words are not weighed on this call, or stt sends none
    (turn,) = [x for x in got if isinstance(x, TurnEnded)]
    assert turn.reason == "model" and turn.end_of_turn_ms == 224


def test_words_of_the_pause_still_count_after_a_faint_tail() -> None:
    """Sound between the thresholds after the pause (a breath) moves the offset but makes no new pause, so no new
    words come: the pause's words still cover every voiced word of it."""
    d = driver(words_wait_ms=450)
    d.speech(640)
    d.silence(64)  # the pause: its words decode the audio up to 704
    words(d, False, end_ms=704)  # "My daughter is allergic to."
    d.windows(160, 0.4)  # a faint tail: the segment goes on to 864, no voiced window, no second pause
    d.silence(224)
    assert len(d.of(SpeechPaused)) == 1 and d.of(SpeechEnded)[0].at_ms == 864
    model(d, True)
    assert outcomes(d) == ["held_unfinished"], "the pause's words hold the turn against the model's complete"

    finished = driver(words_wait_ms=450)
    finished.speech(640)
    finished.silence(64)
    words(finished, True, end_ms=704)
    finished.windows(160, 0.4)
    finished.silence(224)
    (turn,) = [x for x in model(finished, True) if isinstance(x, TurnEnded)]
    assert turn.reason == "model" and outcomes(finished) == ["agreed"], "no wait for words that will not come"


def test_words_arriving_after_a_faint_tail_still_count() -> None:
    d = driver(words_wait_ms=450)
    d.speech(640)
    d.silence(64)
    d.windows(160, 0.4)
    d.silence(224)
    model(d, True)
    assert not d.of(TurnEnded)
    got = words(d, True, end_ms=704)  # decoded at the pause, in after the tail
    assert [type(x) for x in got] == [TurnEnded, WordsWeighed] and outcomes(d) == ["agreed"]
