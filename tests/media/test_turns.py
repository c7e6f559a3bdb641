"""TurnDetector rules with synthetic VAD probabilities and a fake media clock (32 ms per window)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from voice_media.turns import (
    BargeIn,
    Decision,
    DetectorParams,
    PausePlayout,
    ResumePlayout,
    RunTurnModel,
    SegmentDiscarded,
    SpeechBegan,
    SpeechEnded,
    SpeechPaused,
    TurnDetector,
    TurnEnded,
    TurnThresholds,
    WordsWeighed,
)

pytestmark = pytest.mark.unit

W = 32  # ms per window


class Driver:
    """Feeds a detector window by window on a fake clock and records every decision."""

    def __init__(self, det: TurnDetector) -> None:
        self.det = det
        self.t = 0
        self.out: list[Decision] = []

    def windows(self, ms: int, p: float) -> list[Decision]:
        got: list[Decision] = []
        for _ in range(ms // W):
            self.t += W
            got += self.det.on_window(p, self.t)
        self.out += got
        return got

    def speech(self, ms: int, p: float = 0.95) -> list[Decision]:
        return self.windows(ms, p)

    def silence(self, ms: int, p: float = 0.02) -> list[Decision]:
        return self.windows(ms, p)

    def record(self, got: list[Decision]) -> list[Decision]:
        self.out += got
        return got

    def of(self, kind: type) -> list[Any]:
        return [d for d in self.out if isinstance(d, kind)]


def _ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"turn{next(counter)}"


def driver(turn: TurnThresholds | None = None, **params: object) -> Driver:
    params.setdefault("offset_lag_ms", 0)  # whole windows keep the arithmetic readable
    params.setdefault("model_at_pause", False)  # one question per pause unless a test asks for the earlier one
    return Driver(TurnDetector(turn or TurnThresholds(), DetectorParams(**params), new_id=_ids()))  # type: ignore[arg-type]


# ---------------------------------------------------------------- end of turn
def test_end_of_turn_by_silence_hangover() -> None:
    d = driver(use_turn_model=False)
    d.silence(320)
    d.speech(960)
    d.silence(1200)
    (began,) = d.of(SpeechBegan)
    assert began.at_ms == 320 and not began.agent_speaking
    (ended,) = d.of(SpeechEnded)
    assert ended.at_ms == 1280 and ended.speech_ms == 960
    (turn,) = d.of(TurnEnded)
    assert turn.reason == "silence" and turn.turn_id == began.turn_id == "turn1"
    assert turn.start_ms == 320 and turn.speech_end_ms == 1280
    assert 600 <= turn.end_of_turn_ms < 600 + W
    assert not d.of(RunTurnModel)


def test_offset_is_dated_back_by_the_vad_tail() -> None:
    d = driver(use_turn_model=False, offset_lag_ms=64)
    d.speech(960)
    d.silence(1200)
    (ended,) = d.of(SpeechEnded)
    assert ended.at_ms == 960 - 64 and ended.speech_ms == 960 - 64
    (turn,) = d.of(TurnEnded)
    assert turn.speech_end_ms == 896 and 600 <= turn.end_of_turn_ms < 600 + W


def test_end_of_turn_by_model_when_complete() -> None:
    d = driver(TurnThresholds(end_of_turn_ms=800, min_turn_silence_ms=200))
    d.speech(640)
    d.silence(224)
    (req,) = d.of(RunTurnModel)
    assert req.turn_id == "turn1" and req.start_ms == 0 and req.end_ms == 640 + 224
    d.silence(64)  # the model answers a little later
    got = d.record(d.det.on_turn_model(req.request_id, complete=True))
    (turn,) = [x for x in got if isinstance(x, TurnEnded)]
    assert turn.reason == "model" and turn.end_of_turn_ms == 224 + 64
    d.silence(1000)
    assert len(d.of(TurnEnded)) == 1, "the hangover must not end the same turn again"


def test_incomplete_model_answer_leaves_it_to_the_hangover() -> None:
    d = driver()
    d.speech(640)
    d.silence(224)
    (req,) = d.of(RunTurnModel)
    assert d.record(d.det.on_turn_model(req.request_id, complete=False)) == []
    d.silence(800)
    (turn,) = d.of(TurnEnded)
    assert turn.reason == "silence"
    assert len(d.of(RunTurnModel)) == 1, "one question per pause"


def test_stale_model_answer_after_speech_resumed_is_ignored() -> None:
    d = driver()
    d.speech(640)
    d.silence(224)
    (req,) = d.of(RunTurnModel)
    d.speech(320)  # the caller went on talking while the model ran
    assert d.record(d.det.on_turn_model(req.request_id, complete=True)) == []
    assert not d.of(TurnEnded)
    d.silence(900)
    (turn,) = d.of(TurnEnded)
    assert turn.reason == "silence" and turn.start_ms == 0
    assert len(d.of(SpeechBegan)) == 2 and {b.turn_id for b in d.of(SpeechBegan)} == {"turn1"}


def test_short_pause_inside_a_turn_does_not_end_it() -> None:
    d = driver(use_turn_model=False)
    d.speech(500)
    d.silence(320)
    d.speech(500)
    d.silence(700)
    (turn,) = d.of(TurnEnded)
    assert turn.start_ms == 0 and turn.speech_end_ms >= 800


def test_max_duration_cuts_and_keeps_listening() -> None:
    d = driver(use_turn_model=False, max_utterance_ms=3000)
    d.speech(4000)
    d.silence(800)
    first, second = d.of(TurnEnded)
    assert first.reason == "max_duration" and first.start_ms == 0 and first.speech_end_ms == 3008
    assert second.reason == "silence" and second.start_ms == first.speech_end_ms
    assert first.turn_id != second.turn_id


def test_a_blip_is_not_a_turn() -> None:
    d = driver(use_turn_model=False)
    d.speech(64)
    d.silence(1000)
    assert not d.of(TurnEnded)
    assert len(d.of(SegmentDiscarded)) == 1


def test_stalled_audio_ticks_the_hangover() -> None:
    d = driver(use_turn_model=False)
    d.speech(640)
    assert d.record(d.det.tick(d.t + 100)) == []
    got = d.record(d.det.tick(d.t + 1000))
    assert [type(x) for x in got] == [SpeechEnded, TurnEnded]


def test_single_noisy_window_is_not_speech() -> None:
    d = driver()
    for _ in range(10):
        d.speech(W)
        d.silence(3 * W)
    assert not d.of(SpeechBegan)


# ---------------------------------------------------------------- barge-in
def test_barge_in_pauses_at_once_then_commits_with_a_new_epoch() -> None:
    d = driver(TurnThresholds(min_barge_in_ms=400))
    d.record(d.det.playout_started("agent-turn", 0))
    d.silence(320)
    got = d.speech(2 * W)  # two windows over the threshold
    assert [type(x) for x in got] == [PausePlayout, SpeechBegan]
    pause, began = got
    assert isinstance(began, SpeechBegan) and began.agent_speaking and began.at_ms == 320
    assert isinstance(pause, PausePlayout) and pause.at_ms == 384 and pause.agent_turn_id == "agent-turn"
    assert pause.epoch == 0
    d.speech(300)
    assert not d.of(BargeIn)
    d.speech(200)
    (barge,) = d.of(BargeIn)
    assert barge.epoch == 1 and d.det.epoch == 1 and barge.at_ms == 320 and barge.speech_ms >= 400
    assert barge.agent_turn_id == "agent-turn"
    assert not d.det.agent_speaking
    d.silence(1000)
    (turn,) = d.of(TurnEnded)
    assert turn.epoch == 1 and turn.turn_id == began.turn_id and turn.start_ms == 320
    assert not d.of(ResumePlayout)


def test_backchannel_pauses_then_resumes_and_is_discarded() -> None:
    d = driver(TurnThresholds(min_barge_in_ms=400))
    d.record(d.det.playout_started("agent-turn", 0))
    d.silence(320)
    d.speech(300)  # "mm-hmm"
    d.silence(1200)
    assert len(d.of(PausePlayout)) == 1
    (resume,) = d.of(ResumePlayout)
    assert resume.epoch == 0 and resume.agent_turn_id == "agent-turn"
    assert len(d.of(SegmentDiscarded)) == 1
    assert not d.of(BargeIn) and not d.of(TurnEnded) and not d.of(RunTurnModel)
    assert d.det.epoch == 0 and d.det.agent_speaking and not d.det.in_turn


def test_murky_sound_never_holds_the_agent_paused() -> None:
    d = driver(TurnThresholds(min_barge_in_ms=400), barge_in_max_pause_ms=1500)
    d.record(d.det.playout_started("agent-turn", 0))
    d.speech(2 * W)
    d.speech(3000, p=0.45)  # echo between the stop and the speech thresholds
    (pause,) = d.of(PausePlayout)
    (resume,) = d.of(ResumePlayout)
    assert resume.at_ms - pause.at_ms <= 1500
    assert not d.of(BargeIn) and not d.of(TurnEnded) and len(d.of(SegmentDiscarded)) == 1


def test_not_interruptible_never_pauses() -> None:
    d = driver(TurnThresholds(interruptible=False), use_turn_model=False)
    d.record(d.det.playout_started("agent-turn", 0))
    d.speech(1000)
    d.silence(800)
    assert not d.of(PausePlayout) and not d.of(BargeIn) and not d.of(ResumePlayout)
    (began,) = d.of(SpeechBegan)
    assert began.agent_speaking
    (turn,) = d.of(TurnEnded)
    assert turn.epoch == 0


def test_echo_level_probability_does_not_pause_the_agent() -> None:
    d = driver()
    d.record(d.det.playout_started("agent-turn", 0))
    d.speech(1000, p=0.55)  # over the normal threshold, under the barge-in one
    assert not d.of(PausePlayout) and not d.of(SpeechBegan)
    d.record(d.det.playout_finished("agent-turn"))
    d.speech(200, p=0.55)
    assert len(d.of(SpeechBegan)) == 1


def test_alternating_noise_windows_do_not_pause() -> None:
    d = driver()
    d.record(d.det.playout_started("agent-turn", 0))
    for _ in range(20):
        d.speech(W)
        d.silence(W)
    assert not d.of(PausePlayout)


def test_caller_mid_sentence_when_agent_starts_is_a_barge_in() -> None:
    d = driver(TurnThresholds(min_barge_in_ms=400))
    d.speech(640)
    got = d.record(d.det.playout_started("agent-turn", 0))
    assert [type(x) for x in got] == [PausePlayout, BargeIn]
    assert d.det.epoch == 1


def test_short_caller_speech_when_agent_starts_is_kept() -> None:
    d = driver(TurnThresholds(min_barge_in_ms=400), use_turn_model=False)
    d.speech(128)
    got = d.record(d.det.playout_started("agent-turn", 0))
    assert [type(x) for x in got] == [PausePlayout]
    d.speech(96)
    d.silence(900)
    assert len(d.of(ResumePlayout)) == 1 and not d.of(BargeIn)
    (turn,) = d.of(TurnEnded)
    assert turn.start_ms == 0 and turn.epoch == 0


def test_agent_finishing_during_a_suspected_barge_in_keeps_the_turn() -> None:
    d = driver(TurnThresholds(min_barge_in_ms=400), use_turn_model=False)
    d.record(d.det.playout_started("agent-turn", 0))
    d.speech(160)
    d.record(d.det.playout_finished("agent-turn"))
    d.speech(400)
    d.silence(800)
    assert not d.of(BargeIn) and d.det.epoch == 0
    assert len(d.of(PausePlayout)) == len(d.of(ResumePlayout)) == 1
    assert len(d.of(TurnEnded)) == 1


def test_stale_playout_after_barge_in_is_ignored() -> None:
    d = driver(TurnThresholds(min_barge_in_ms=200))
    d.record(d.det.playout_started("a1", 0))
    d.speech(400)
    assert d.det.epoch == 1
    d.record(d.det.playout_started("a1", 0))  # in flight before ingress cleared it
    assert not d.det.agent_speaking
    d.silence(1000)
    d.record(d.det.playout_started("a2", 1))
    assert d.det.agent_speaking


def test_call_end_captures_a_turn_in_progress_only() -> None:
    d = driver()
    d.speech(640)
    got = d.det.end_of_call()
    assert [type(x) for x in got] == [SpeechEnded, TurnEnded]
    assert isinstance(got[1], TurnEnded) and got[1].reason == "call_end"
    d2 = driver()
    d2.record(d2.det.playout_started("a", 0))
    d2.speech(128)  # pending barge-in: a possible backchannel, not a turn
    assert d2.det.end_of_call() == []


# ---------------------------------------------------------------- the turn model asked at the pause (model_at_pause)
def test_a_complete_answer_at_the_pause_ends_the_turn_at_the_least_silence() -> None:
    d = driver(TurnThresholds(end_of_turn_ms=800, min_turn_silence_ms=200), model_at_pause=True)
    d.speech(640)
    d.silence(64)  # pause_ms: the likely final transcript and the model's question, the segment still open
    (paused,) = d.of(SpeechPaused)
    (req,) = d.of(RunTurnModel)
    assert req.turn_id == paused.turn_id == "turn1" and (req.start_ms, req.end_ms) == (0, 640 + 64)
    assert d.record(d.det.on_turn_model(req.request_id, complete=True)) == []  # not before the least silence
    d.record(d.det.on_transcript("turn1", 640 + 64, True))  # the pause's likely final words sound finished
    d.silence(128)
    assert not d.of(TurnEnded)
    d.silence(32)
    (turn,) = d.of(TurnEnded)
    assert turn.reason == "model" and turn.end_of_turn_ms == 224  # the first window past min_turn_silence_ms
    assert [w.outcome for w in d.of(WordsWeighed)] == ["agreed"]
    assert len(d.of(RunTurnModel)) == 1, "answered already: no second question"
    d.silence(1000)
    assert len(d.of(TurnEnded)) == 1


def test_a_complete_answer_about_the_pause_that_comes_late_ends_the_turn_when_it_comes() -> None:
    d = driver(TurnThresholds(min_turn_silence_ms=200), model_at_pause=True)
    d.speech(640)
    d.silence(224)
    at_pause, at_silence = d.of(RunTurnModel)  # the pause's question is still running: asked again at 200 ms
    assert (at_pause.end_ms, at_silence.end_ms) == (640 + 64, 640 + 224)
    d.record(d.det.on_transcript("turn1", 640 + 64, True))
    d.silence(32)
    got = d.record(d.det.on_turn_model(at_pause.request_id, complete=True))
    (turn,) = [x for x in got if isinstance(x, TurnEnded)]
    assert turn.reason == "model" and turn.end_of_turn_ms == 256
    assert d.record(d.det.on_turn_model(at_silence.request_id, complete=True)) == []


def test_a_complete_answer_at_the_pause_waits_for_the_pauses_words() -> None:
    d = driver(TurnThresholds(min_turn_silence_ms=200), model_at_pause=True)
    d.speech(640)
    d.silence(64)
    (req,) = d.of(RunTurnModel)
    d.record(d.det.on_turn_model(req.request_id, complete=True))
    d.silence(224)
    assert not d.of(TurnEnded), "no words yet: they may say the sentence goes on"
    got = d.record(d.det.on_transcript("turn1", 640 + 64, True))  # they come, and sound finished
    (turn,) = [x for x in got if isinstance(x, TurnEnded)]
    assert turn.reason == "model" and turn.end_of_turn_ms == 288


def test_an_incomplete_answer_at_the_pause_leaves_it_to_the_question_at_the_least_silence() -> None:
    d = driver(TurnThresholds(min_turn_silence_ms=200), model_at_pause=True)
    d.speech(640)
    d.silence(64)
    (at_pause,) = d.of(RunTurnModel)
    assert d.record(d.det.on_turn_model(at_pause.request_id, complete=False)) == []
    d.silence(160)
    _, at_silence = d.of(RunTurnModel)
    got = d.record(d.det.on_turn_model(at_silence.request_id, complete=True))
    assert [x.reason for x in got if isinstance(x, TurnEnded)] == ["model"]


@pytest.mark.parametrize("went_on", [0.95, 0.4], ids=["voiced", "faint"])
def test_an_answer_about_a_pause_the_caller_spoke_through_is_stale(went_on: float) -> None:
    d = driver(model_at_pause=True)
    d.speech(640)
    d.silence(64)
    (req,) = d.of(RunTurnModel)
    d.windows(32, went_on)  # speech again (or sound between the thresholds) while the model ran
    assert d.record(d.det.on_turn_model(req.request_id, complete=True)) == []
    d.silence(320)
    assert not d.of(TurnEnded), "the stale answer must not end the turn"
    d.silence(640)
    (turn,) = d.of(TurnEnded)
    assert turn.reason == "silence"


def test_unfinished_words_hold_a_turn_the_model_called_complete_at_the_pause() -> None:
    d = driver(TurnThresholds(min_turn_silence_ms=200), model_at_pause=True)
    d.speech(640)
    d.silence(64)
    (req,) = d.of(RunTurnModel)
    d.record(d.det.on_transcript("turn1", 640 + 64, False))  # "I would like to book a table for"
    d.record(d.det.on_turn_model(req.request_id, complete=True))
    d.silence(1024)
    assert not d.of(TurnEnded)
    assert [w.outcome for w in d.of(WordsWeighed)] == ["held_unfinished"]
    d.silence(256)
    (turn,) = d.of(TurnEnded)
    assert turn.reason == "silence" and turn.end_of_turn_ms >= 1200


def test_no_question_at_the_pause_without_the_turn_model() -> None:
    d = driver(use_turn_model=False, model_at_pause=True)
    d.speech(640)
    d.silence(1000)
    assert d.of(SpeechPaused) and not d.of(RunTurnModel)


# ---------------------------------------------------------------- invariants
_step = st.one_of(
    st.tuples(st.just("w"), st.floats(0.0, 1.0)),
    st.tuples(st.just("start"), st.sampled_from(["a", "b"])),
    st.tuples(st.just("finish"), st.sampled_from(["a", "b"])),
    st.tuples(st.just("model"), st.booleans()),
    # likely final words: (sound finished, audio end relative to now, of the current turn or another)
    st.tuples(st.just("words"), st.tuples(st.sampled_from([True, False, None]), st.integers(-300, 0), st.booleans())),
)


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(_step, max_size=400),
       interruptible=st.booleans(), min_barge=st.sampled_from([96, 200, 400]), at_pause=st.booleans(),
       words_wait=st.sampled_from([0, 450]))
def test_invariants_hold_for_any_input(steps: list[tuple[str, object]], interruptible: bool,
                                       min_barge: int, at_pause: bool, words_wait: int) -> None:
    det = TurnDetector(TurnThresholds(interruptible=interruptible, min_barge_in_ms=min_barge),
                       DetectorParams(max_utterance_ms=3000, model_at_pause=at_pause, words_wait_ms=words_wait),
                       new_id=_ids())
    t, last_req, out = 0, 0, []
    for kind, arg in steps:
        if kind == "w":
            t += W
            out += det.on_window(float(arg), t)  # type: ignore[arg-type]
        elif kind == "start":
            out += det.playout_started(str(arg), det.epoch)
        elif kind == "finish":
            out += det.playout_finished(str(arg))
        elif kind == "words":
            finished, back, current = cast(tuple[bool | None, int, bool], arg)
            out += det.on_transcript((det.turn_id or "gone") if current else "other", t + back, finished)
        else:
            out += det.on_turn_model(last_req, bool(arg))
        for d in out[-3:]:
            if isinstance(d, RunTurnModel):
                last_req = d.request_id
    out += det.end_of_call()
    pause_open, epoch, ended = False, 0, set()
    for d in out:
        if isinstance(d, PausePlayout):
            assert not pause_open and interruptible
            pause_open = True
        elif isinstance(d, ResumePlayout | BargeIn):
            assert pause_open
            pause_open = False
        elif isinstance(d, SpeechPaused):
            assert not pause_open, "no likely final transcript of a suspected barge-in"
        if isinstance(d, BargeIn):
            assert d.epoch == epoch + 1
            epoch = d.epoch
        if isinstance(d, TurnEnded):
            assert d.turn_id not in ended and d.start_ms <= d.speech_end_ms <= d.decided_ms
            ended.add(d.turn_id)
    assert det.epoch == epoch
