"""The capacity bench's two jitter figures on made-up arrivals: the playout lead's burst is not playout jitter."""

from __future__ import annotations

from bench.capacity import jitter_values, lateness_values
from bench.twilio_caller import Received

FRAME = b"\xff" * 160  # 20 ms of μ-law


def ms(values: list[float]) -> list[float]:
    return [round(x, 6) for x in values]


def arrivals(*at_ms: float) -> list[Received]:
    return [Received(at=t / 1000, payload=FRAME) for t in at_ms]


def test_the_lead_burst_is_arrival_jitter_but_not_playout_jitter() -> None:
    # a reply's start: three frames at once (the 60 ms lead), then one every 20 ms
    r = arrivals(0, 0, 0, 20, 40, 60)
    assert ms(jitter_values(r)) == [20.0, 20.0, 0.0, 0.0, 0.0]
    assert ms(lateness_values(r)) == [0.0] * 5


def test_a_late_frame_is_both() -> None:
    r = arrivals(0, 20, 75, 80, 100)  # the third came 35 ms late, the fourth right after it
    assert ms(lateness_values(r)) == [0.0, 35.0, 0.0, 0.0]
    assert ms(jitter_values(r)) == [0.0, 35.0, 15.0, 0.0]


def test_a_pause_between_replies_is_neither() -> None:
    r = arrivals(0, 20, 3000, 3020)  # more than a second apart: another reply
    assert ms(lateness_values(r)) == [0.0, 0.0] and ms(jitter_values(r)) == [0.0, 0.0]
