"""Small statistics helpers: percentiles and summaries that serialize to JSON."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no data."""
    xs = sorted(values)
    if not xs:
        return None
    if len(xs) == 1:
        return float(xs[0])
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))


def summary(values: Iterable[float | None], *, ndigits: int = 1) -> dict[str, Any]:
    """n, mean, min, p50, p95, p99, max of the non-None values (rounded)."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]

    def r(v: float | None) -> float | None:
        return None if v is None else round(v, ndigits)

    if not xs:
        return {"n": 0, "mean": None, "min": None, "p50": None, "p95": None, "p99": None, "max": None}
    return {
        "n": len(xs),
        "mean": r(sum(xs) / len(xs)),
        "min": r(min(xs)),
        "p50": r(percentile(xs, 50)),
        "p95": r(percentile(xs, 95)),
        "p99": r(percentile(xs, 99)),
        "max": r(max(xs)),
    }


def linear_slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of ys over xs; None with fewer than 3 points or no spread in xs."""
    if len(xs) < 3 or len(xs) != len(ys):
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 1)
