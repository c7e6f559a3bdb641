"""Playout ordering: chunks in order across tts replicas, turns queued, clear and stale epochs, and turns whose
audio stops arriving (the gap) or that a newer turn supersedes. Time is passed in: no clock, no sleeping."""

from __future__ import annotations

import pytest
from voice_ingress.playout import Outgoing, PlayoutBuffer, TurnClosed
from voice_schemas.audio import FRAME_BYTES, AudioFrame

pytestmark = pytest.mark.unit


def f(turn: str, chunk: int, seq: int, *, last: bool = False, final: bool = False, epoch: int = 0) -> AudioFrame:
    return AudioFrame(pcm=bytes([seq % 256]) * FRAME_BYTES, seq=seq, epoch=epoch, turn_id=turn, chunk=chunk,
                      last_in_chunk=last, final=final)


def drain(b: PlayoutBuffer, now: float = 0.0) -> list[tuple[int, bool, bool] | TurnClosed]:
    """Frames as (seq, end of chunk, end of turn), and turns given up, until nothing is playable at ``now``."""
    out: list[tuple[int, bool, bool] | TurnClosed] = []
    while (o := b.next(now)) is not None:
        out.append((o.frame.seq, o.end_of_chunk, o.end_of_turn) if isinstance(o, Outgoing) else o)
    return out


def test_chunks_play_in_order_even_when_frames_interleave() -> None:
    b = PlayoutBuffer()
    b.add(f("t1", 1, 10), 0)
    b.add(f("t1", 1, 11, last=True, final=True), 0)
    assert b.next(0) is None  # chunk 0 not here yet
    b.add(f("t1", 0, 1), 0)
    b.add(f("t1", 0, 2, last=True), 0)
    assert drain(b) == [(1, False, False), (2, True, False), (10, False, False), (11, True, True)]
    assert not b.pending()


def test_first_frame_of_turn_is_flagged_and_turns_queue() -> None:
    b = PlayoutBuffer()
    b.add(f("a", 0, 1, last=True, final=True), 0)
    b.add(f("b", 0, 2, last=True, final=True), 0)
    first = b.next(0)
    assert isinstance(first, Outgoing) and first.first_of_turn and first.end_of_turn
    second = b.next(0)
    assert isinstance(second, Outgoing) and second.first_of_turn and second.frame.turn_id == "b"


def test_barge_in_clears_and_refuses_stale_epochs() -> None:
    b = PlayoutBuffer()
    b.add(f("t1", 0, 1), 0)
    b.add(f("t1", 0, 2), 0)
    b.add(f("t2", 0, 3, last=True, final=True), 0)  # queued behind t1: dropped too
    assert b.next(0) is not None
    assert b.clear(1) == [("t1", 0), ("t2", 0)]
    assert b.next(0) is None
    assert not b.add(f("t1", 0, 3), 0)  # late frame of the cancelled reply
    assert b.dropped_stale == 1
    assert b.add(f("t3", 0, 4, last=True, final=True, epoch=1), 0)
    assert drain(b) == [(4, True, True)]


def test_audio_of_the_new_epoch_that_arrived_before_the_barge_in_stays() -> None:
    b = PlayoutBuffer()
    b.add(f("old", 0, 1), 0)
    b.add(f("new", 0, 2, last=True, final=True, epoch=1), 0)
    assert b.clear(1) == [("old", 0)]
    assert drain(b) == [(2, True, True)]


def test_a_turn_whose_audio_stops_is_closed_after_the_gap_while_it_plays() -> None:
    b = PlayoutBuffer(gap_s=2.0)
    b.add(f("t1", 0, 1, last=True), 10.0)  # chunk 1 (the final one) never comes
    assert drain(b, 10.0) == [(1, True, False)]
    assert b.next(11.0) is None and b.wake_at() == 12.0
    assert b.next(11.99) is None
    assert b.next(12.0) == TurnClosed("t1", 0, started=True, superseded=False)
    assert not b.pending() and b.wake_at() is None
    assert not b.add(f("t1", 1, 2, last=True, final=True), 12.5)  # too late: it was given up
    b.add(f("t2", 0, 3, last=True, final=True), 13.0)
    assert drain(b, 13.0) == [(3, True, True)]


def test_the_gap_counts_only_while_the_turn_is_played() -> None:
    b = PlayoutBuffer(gap_s=2.0)
    b.add(f("t1", 0, 1, last=True), 0.0)
    b.add(f("t2", 1, 2), 0.5)  # waits behind t1, with nothing playable (its chunk 0 is late)
    assert drain(b, 1.0) == [(1, True, False)]
    # a frame of the playing turn restarts its gap
    b.add(f("t1", 1, 3), 2.5)
    assert drain(b, 2.5) == [(3, False, False)]
    assert b.next(4.4) is None and b.wake_at() == 4.5
    # a pause holds playout: the gap counts again from the resume
    b.resume(9.0)
    assert b.next(10.9) is None
    # t2 becomes the turn being played only now: its gap starts now, not when its frame arrived
    assert drain(b, 11.0) == [TurnClosed("t1", 0, started=True, superseded=False)]
    assert b.next(12.9) is None
    assert b.next(13.0) == TurnClosed("t2", 0, started=False, superseded=False)


def test_a_newer_turn_with_audio_supersedes_a_stalled_one_at_once() -> None:
    b = PlayoutBuffer(gap_s=60.0)
    b.add(f("t1", 0, 1, last=True), 0)
    b.add(f("t1", 1, 2), 0)  # more of t1 is queued: it keeps playing while it has audio
    b.add(f("t2", 0, 3, last=True, final=True), 0)
    assert drain(b) == [(1, True, False), (2, False, False), TurnClosed("t1", 0, started=True, superseded=True),
                        (3, True, True)]


def test_a_turn_not_started_is_superseded_too_and_older_epochs_never_supersede_newer_ones() -> None:
    b = PlayoutBuffer(gap_s=60.0)
    b.add(f("t1", 1, 1, last=True, final=True, epoch=1), 0)  # its chunk 0 was lost
    b.add(f("t0", 0, 2, last=True, final=True, epoch=0), 0)  # an older epoch's reply (its barge-in not seen yet)
    assert b.next(0) is None  # t0 is older: it does not move t1 on
    b.add(f("t2", 0, 3, last=True, final=True, epoch=1), 0)
    # a newer epoch's audio ends the older epoch's turns (their barge-in is on its way)
    assert drain(b) == [TurnClosed("t1", 1, started=False, superseded=True),
                        TurnClosed("t0", 0, started=False, superseded=True), (3, True, True)]


def test_a_finished_turn_refuses_late_frames() -> None:
    b = PlayoutBuffer()
    b.add(f("t1", 0, 1, last=True, final=True), 0)
    assert drain(b) == [(1, True, True)]
    assert not b.add(f("t1", 0, 9), 0)  # a straggler would otherwise open a turn that waits for chunk 0
    assert not b.pending()


@pytest.mark.unit
def test_a_chunk_sent_again_plays_only_the_frames_not_yet_had() -> None:
    """A tts replica died mid-chunk and another synthesized the whole chunk again: its first frames repeat what
    was queued (or played) and are dropped; the rest continue the chunk."""
    buf = PlayoutBuffer()

    def f(i: int, last: bool = False) -> AudioFrame:
        return AudioFrame(pcm=bytes([i]) * 640, seq=100 + i, turn_id="t1", chunk=0, frame=i, last_in_chunk=last,
                          final=last)

    assert buf.add(f(0), 0.0) and buf.add(f(1), 0.0)
    played = [buf.next(0.0)]
    assert all(not buf.add(f(i), 0.1) for i in (0, 1))  # sent again: already had
    assert buf.add(f(2), 0.1) and buf.add(f(3, last=True), 0.1)
    while (out := buf.next(0.2)) is not None:
        played.append(out)
    frames = [o.frame.frame for o in played if hasattr(o, "frame")]
    assert frames == [0, 1, 2, 3]


def take(b: PlayoutBuffer, n: int, now: float = 0.0) -> list[Outgoing]:
    """The next ``n`` frames, as sent to the caller."""
    out = []
    for _ in range(n):
        o = b.next(now)
        assert isinstance(o, Outgoing)
        out.append(o)
    return out


def test_frames_put_back_play_again_first_in_order_across_chunk_boundaries() -> None:
    b = PlayoutBuffer()
    for seq, chunk, last in [(1, 0, False), (2, 0, False), (3, 0, True), (4, 1, False), (5, 1, True)]:
        b.add(f("t1", chunk, seq, last=last, final=seq == 5), 0)
    sent = take(b, 4)  # 1, 2, 3 (end of chunk 0), 4
    assert [o.frame.seq for o in sent] == [1, 2, 3, 4] and sent[2].end_of_chunk
    assert b.put_back(sent[2:], 1.0) == 2  # 3 and 4 had not played: chunk 0 is not over after all
    again = b.next(1.0)
    assert isinstance(again, Outgoing) and again.frame.seq == 3 and again.end_of_chunk and not again.end_of_turn
    assert not again.first_of_turn  # the turn started before the pause
    assert drain(b, 1.0) == [(4, False, False), (5, True, True)]
    assert not b.pending()


def test_a_finished_turn_put_back_is_open_again_and_stays_ahead_of_the_next_turn() -> None:
    b = PlayoutBuffer()
    b.add(f("a", 0, 1), 0)
    b.add(f("a", 0, 2, last=True, final=True), 0)
    b.add(f("b", 0, 3), 0)
    b.add(f("b", 0, 4, last=True, final=True), 0)
    sent = take(b, 3)  # a's two frames (a finishes), b's first
    assert sent[1].end_of_turn and sent[2].first_of_turn and not b.holds("a", 0)
    b.put_back(sent[1:], 1.0)
    assert b.holds("a", 0)
    # a's end plays again (and ends the turn again), then b from its first frame, not its first again
    first, second = take(b, 2, 1.0)
    assert first.frame.seq == 2 and first.end_of_turn and not first.first_of_turn
    assert second.frame.seq == 3 and not second.first_of_turn
    assert drain(b, 1.0) == [(4, True, True)]
    assert not b.add(f("a", 0, 9), 2.0)  # a is over again: its stragglers are refused
    assert not b.pending()


def test_frames_put_back_go_in_front_of_frames_that_arrived_meanwhile() -> None:
    b = PlayoutBuffer()
    b.add(f("t1", 0, 1), 0)
    b.add(f("t1", 0, 2), 0)
    sent = take(b, 2)
    b.add(f("t1", 0, 3, last=True, final=True), 0.5)  # arrived while the pause took them back
    b.put_back(sent[1:], 1.0)
    assert drain(b, 1.0) == [(2, False, False), (3, True, True)]


def test_a_chunk_sent_again_after_a_put_back_still_plays_only_frames_not_yet_had() -> None:
    b = PlayoutBuffer()
    frames = [AudioFrame(pcm=bytes([i]) * FRAME_BYTES, seq=i, turn_id="t1", chunk=0, frame=i, last_in_chunk=i == 2,
                         final=i == 2) for i in range(3)]
    for fr in frames:
        b.add(fr, 0)
    sent = take(b, 3)
    b.put_back(sent[1:], 1.0)
    assert not b.add(frames[2], 1.0)  # a tts replica sent the chunk again: it is queued already
    assert [o.frame.frame for o in take(b, 2, 1.0)] == [1, 2]
    assert not b.pending()


def test_a_barge_in_drops_frames_put_back_and_a_newer_epoch_refuses_them() -> None:
    b = PlayoutBuffer()
    b.add(f("t1", 0, 1), 0)
    b.add(f("t1", 0, 2, last=True, final=True), 0)
    sent = take(b, 2)
    b.put_back(sent, 1.0)
    assert b.clear(1) == [("t1", 0)]  # the pause was a barge-in after all
    assert not b.pending() and b.next(1.0) is None
    assert b.put_back(sent, 2.0) == 0  # (taken back only after the barge-in: still dropped)
    assert not b.pending()
