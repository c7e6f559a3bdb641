"""Playout ordering: chunks in order across tts replicas, turns queued, clear and stale epochs."""

from __future__ import annotations

import pytest
from voice_ingress.playout import PlayoutBuffer
from voice_schemas.audio import FRAME_BYTES, AudioFrame

pytestmark = pytest.mark.unit


def f(turn: str, chunk: int, seq: int, *, last: bool = False, final: bool = False, epoch: int = 0) -> AudioFrame:
    return AudioFrame(pcm=bytes([seq % 256]) * FRAME_BYTES, seq=seq, epoch=epoch, turn_id=turn, chunk=chunk,
                      last_in_chunk=last, final=final)


def drain(b: PlayoutBuffer) -> list[tuple[int, bool, bool]]:
    out = []
    while (o := b.next()) is not None:
        out.append((o.frame.seq, o.end_of_chunk, o.end_of_turn))
    return out


def test_chunks_play_in_order_even_when_frames_interleave() -> None:
    b = PlayoutBuffer()
    b.add(f("t1", 1, 10))
    b.add(f("t1", 1, 11, last=True, final=True))
    assert b.next() is None  # chunk 0 not here yet
    b.add(f("t1", 0, 1))
    b.add(f("t1", 0, 2, last=True))
    assert drain(b) == [(1, False, False), (2, True, False), (10, False, False), (11, True, True)]
    assert not b.pending()


def test_first_frame_of_turn_is_flagged_and_turns_queue() -> None:
    b = PlayoutBuffer()
    b.add(f("a", 0, 1, last=True, final=True))
    b.add(f("b", 0, 2, last=True, final=True))
    first = b.next()
    assert first is not None and first.first_of_turn and first.end_of_turn
    second = b.next()
    assert second is not None and second.first_of_turn and second.frame.turn_id == "b"


def test_barge_in_clears_and_refuses_stale_epochs() -> None:
    b = PlayoutBuffer()
    b.add(f("t1", 0, 1))
    b.add(f("t1", 0, 2))
    assert b.next() is not None
    assert b.clear(1) == ["t1"]
    assert b.next() is None
    assert not b.add(f("t1", 0, 3))  # late frame of the cancelled reply
    assert b.dropped_stale == 1
    assert b.add(f("t2", 0, 4, last=True, final=True, epoch=1))
    assert drain(b) == [(4, True, True)]
