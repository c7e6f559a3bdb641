"""An estimated CSAT (1-5) from the caller's sentiment trajectory (``sentiment.py``'s rolling values).

    x    = clamp(0.5 + 0.35 * end + 0.15 * (end - start), 0, 1)
    CSAT = 1 + 4 * x                                   (rounded to 2 decimals)

``start`` is the caller's first rolling value (their first utterance's score), ``end`` the last one (the rolling
value after the call's last caller utterance, which weighs recent utterances most). A neutral call scores 3; a
call that ends happy scores high, more so when it started unhappy (the agent turned it round); one that ends angry
scores low, lower still when it got worse. No scored caller utterance: no estimate (None).
"""

from __future__ import annotations

from collections.abc import Sequence

BASE, END_WEIGHT, TREND_WEIGHT = 0.5, 0.35, 0.15


def estimate(rolling: Sequence[float]) -> float | None:
    """The estimate from the caller's rolling sentiment values in spoken order (each in [-1, 1])."""
    if not rolling:
        return None
    start, end = _clamp(rolling[0], -1.0, 1.0), _clamp(rolling[-1], -1.0, 1.0)
    x = _clamp(BASE + END_WEIGHT * end + TREND_WEIGHT * (end - start), 0.0, 1.0)
    return round(1.0 + 4.0 * x, 2)


def _clamp(v: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, v))
