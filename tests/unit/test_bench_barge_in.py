"""Barge-in and backchannel figures of `make bench`, computed from synthetic frames the caller received.

Frames are 20 ms of μ-law (160 bytes); times are seconds on the caller's monotonic clock.
"""

from __future__ import annotations

import pytest

from bench import calls, twilio_caller
from bench.calls import BackchannelTrial, BargeInResult
from bench.events import ControlEvent
from bench.report import barge_in_figures
from bench.twilio_caller import Received

pytestmark = pytest.mark.unit

FRAME = b"\x00" * 160  # 20 ms


def frames(start: float, count: int, every: float = 0.02) -> list[Received]:
    return [Received(round(start + i * every, 6), FRAME) for i in range(count)]


def test_playout_clock_queues_frames_and_clear_drops_what_has_not_played() -> None:
    burst = frames(0.0, 50, every=0.001)  # 1 s of audio in 50 ms: queued ahead of the playout
    played = twilio_caller.replay(burst, clears=[0.5])
    assert played[0].start == 0.0 and played[-1].start == pytest.approx(0.98)
    assert sum(p.dropped for p in played) == 25  # the ones due at 0.5 s or later never play
    assert max(p.end for p in played if not p.dropped) == pytest.approx(0.5)
    live = twilio_caller.PlayoutClock()  # the live caller's clock gives the same
    for r in burst:
        live.media(r)
    live.clear(0.5)
    assert [(p.start, p.end, p.dropped) for p in live.frames] == [(p.start, p.end, p.dropped) for p in played]
    assert live.play_until == 0.5


def test_stop_hearing_counts_audio_queued_ahead_when_no_frame_arrives_after_the_onset() -> None:
    # the whole reply arrived in a burst before the onset; the caller still has 0.8 s of it to play at 0.2 s
    t = calls.measure_barge_in(frames(0.0, 50, every=0.001), clears=[], onset=0.2, speech_end=1.5)
    assert t.agent_was_speaking and t.error is None
    assert t.onset_to_stop_hearing_ms == pytest.approx(800.0, abs=0.5)
    assert t.onset_to_last_frame_received_ms is None  # arrival-based: nothing to measure (was 0.0)
    assert t.audio_played_after_onset_ms == pytest.approx(800.0, abs=0.5)
    assert t.audio_received_after_onset_ms == 0.0


def test_stop_hearing_ends_at_the_clear_and_counts_what_it_dropped() -> None:
    t = calls.measure_barge_in(frames(0.0, 50, every=0.001), clears=[0.5], onset=0.2, speech_end=1.5)
    assert t.onset_to_clear_ms == pytest.approx(300.0)
    assert t.onset_to_stop_hearing_ms == pytest.approx(300.0, abs=0.5)
    assert t.audio_dropped_by_clear_ms == 500.0  # 25 frames received, never played
    assert t.frames_after_clear == 0
    assert t.onset_to_last_frame_received_ms is None


def test_stop_hearing_is_later_than_the_last_frame_received_by_its_playout() -> None:
    # real-time frames; the interruption starts at 1.0 s, `clear` at 1.505 s, two frames were still in flight;
    # a new reply starts at 1.8 s while the caller is still speaking (until 2.5 s): not the interrupted one
    old = frames(0.0, 78)  # last at 1.54 s
    new = frames(1.8, 10)
    t = calls.measure_barge_in(old + new, clears=[1.505], onset=1.0, speech_end=2.5)
    assert t.onset_to_last_frame_received_ms == pytest.approx(540.0, abs=0.5)
    assert t.onset_to_stop_hearing_ms == pytest.approx(560.0, abs=0.5)  # + the last frame's 20 ms of playout
    assert t.frames_after_clear == 2 and t.audio_dropped_by_clear_ms == 0.0
    assert t.new_reply_while_speaking_ms == 200.0


def test_no_frame_after_the_onset_is_a_missing_measurement_not_zero_ms() -> None:
    # a `clear` came, but nothing of the reply arrived after the onset and nothing was left to play: the agent
    # was not speaking at the onset, so the trial is no interruption (not a 0 ms one)
    t = calls.measure_barge_in(frames(0.0, 40), clears=[1.2], onset=0.9, speech_end=2.0)
    assert t.onset_to_last_frame_received_ms is None
    assert t.onset_to_stop_hearing_ms is None
    assert not t.agent_was_speaking and t.error
    measured = calls.measure_barge_in(frames(0.0, 78), clears=[1.505], onset=1.0, speech_end=2.5)
    # one that was speaking, with nothing after the onset measurable on arrival: a burst played out of the queue
    burst = calls.measure_barge_in(frames(0.0, 50, every=0.001), clears=[], onset=0.2, speech_end=1.5)
    fig = barge_in_figures([BargeInResult("platform", trials=[t, measured, burst])])
    assert fig["trials"] == 3 and fig["trials_during_agent_speech"] == 2
    received = fig["onset_to_last_agent_frame_received_ms"]
    assert received["n"] == 1 and received["missing"] == 1 and received["min"] == pytest.approx(540.0, abs=0.5)
    assert fig["onset_to_caller_stops_hearing_ms"]["n"] == 2


def test_an_onset_between_two_sentences_is_not_an_interruption_of_speech() -> None:
    # the first sentence ended 0.1 s before the onset; the next began 1.49 s into the caller's speech and was
    # heard for 20 ms before the platform paused it: the caller never talked over the agent at the onset
    first = frames(0.0, 45)  # plays until 0.9 s
    second = frames(2.49, 1)
    t = calls.measure_barge_in(first + second, clears=[2.51], onset=1.0, speech_end=3.0, agent_was_speaking=True)
    assert not t.agent_was_speaking and "no agent audio" in (t.error or "")


def test_a_reply_ending_within_a_frame_of_the_onset_is_not_an_interruption() -> None:
    # the reply's audio ends 3.7 ms after the onset: nothing was left to cut off
    ending = frames(0.0, 50)  # plays until 1.0 s
    assert not calls.measure_barge_in(ending, clears=[1.1], onset=0.9963, speech_end=2.0).agent_was_speaking
    assert calls.speaking_at(ending, 0.97)  # 30 ms before its end it still counts
    assert not calls.speaking_at(ending, 0.99)


def test_the_caller_knows_how_long_it_has_heard_the_agent_and_what_is_queued() -> None:
    c = twilio_caller.TwilioCaller.__new__(twilio_caller.TwilioCaller)
    c.playout = twilio_caller.PlayoutClock()
    for r in frames(0.0, 10) + frames(0.5, 20):  # 0-0.2 s, a break, 0.5-0.9 s
        c.playout.media(r)
    heard, ahead = c.agent_heard_run(at=0.7)
    assert heard == pytest.approx(0.2) and ahead == pytest.approx(0.2)
    assert c.agent_heard_run(at=0.95) == (0.0, 0.0)
    c.playout.clear(0.6)  # what a `clear` dropped is not queued any more
    assert c.agent_heard_run(at=0.7) == (0.0, 0.0)


def test_trials_without_a_clear_have_no_clear_figures() -> None:
    t = calls.measure_barge_in(frames(0.0, 100), clears=[], onset=1.0, speech_end=1.5)
    assert t.onset_to_clear_ms is None and t.frames_after_clear is None and t.audio_dropped_by_clear_ms is None
    fig = barge_in_figures([BargeInResult("platform", trials=[t])])
    assert fig["frames_after_clear_max"] is None and fig["onset_to_clear_ms"]["missing"] == 1


def test_platform_controls_are_none_when_not_observable_and_timed_when_seen() -> None:
    old = frames(0.0, 78)
    assert calls.measure_barge_in(old, [1.505], 1.0, 2.5).platform_controls is None
    ctl = [ControlEvent("c", "pause", 1.12), ControlEvent("c", "barge_in", 1.5), ControlEvent("c", "pause", 9.0)]
    t = calls.measure_barge_in(old, [1.505], 1.0, 2.5, controls=ctl)
    assert t.platform_controls == [("pause", 120.0), ("barge_in", 500.0)]
    assert t.onset_to_platform_barge_in_ms == 500.0


def test_backchannel_without_agent_audio_after_it_has_no_pause_figure() -> None:
    assert BackchannelTrial(speech_ms=300).paused_ms is None  # the default is "not measured", not 0 ms
    bc = calls.measure_backchannel(frames(0.0, 10), clears=[], onset=1.0, speech_end=1.3, speech_ms=300,
                                   agent_was_speaking=True)
    assert bc.paused_ms is None and bc.silence_heard_ms is None and bc.continued is False
    assert bc.platform_pause is None  # no events from this target


def test_backchannel_pause_on_arrival_and_on_the_playout_clock() -> None:
    # agent audio until 1.1 s, nothing until 1.77 s, then on: a 0.67 s hole right after the backchannel
    rx = frames(0.0, 56) + frames(1.78, 100)
    bc = calls.measure_backchannel(rx, clears=[], onset=1.0, speech_end=1.3, speech_ms=300,
                                   agent_was_speaking=True, controls=[ControlEvent("c", "pause", 1.1)])
    assert bc.paused_ms == pytest.approx(680.0, abs=0.5)  # 1.10 → 1.78 between frames received
    assert bc.silence_heard_ms == pytest.approx(660.0, abs=0.5)  # the frame at 1.10 s played until 1.12 s
    assert bc.continued is True and bc.platform_pause is True and not bc.cleared
