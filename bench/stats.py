"""Small statistics helpers: percentiles and summaries that serialize to JSON.

A percentile is only reported when the sample can support it: the q-th percentile needs at least
``min_samples(q)`` values (p95: 20, p99: 100), i.e. enough that some of them lie above it. Below that, a
summary leaves the percentile out (None) and says why under ``omitted``; a report prints "n too small".
Missing measurements (None) are never counted as a value: ``missing`` says how many there were.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

QUANTILES = (50, 95, 99)


def min_samples(q: float) -> int:
    """Fewest values a q-th percentile is reported from: 100 / (100 - q) for q above the median (p95: 20,
    p99: 100), 1 for the median and below."""
    if q <= 50:
        return 1
    return math.ceil(100.0 / (100.0 - q) - 1e-9)


def too_small(n: int, q: float) -> str | None:
    """Why the q-th percentile of n values is not reported, or None when it is."""
    need = min_samples(q)
    return f"n too small ({n} < {need})" if 0 < n < need else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no data. Not gated: see ``reported_percentile``."""
    xs = sorted(values)
    if not xs:
        return None
    if len(xs) == 1:
        return float(xs[0])
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))


def reported_percentile(values: Sequence[float], q: float) -> float | None:
    """The percentile, or None when there are too few values to report it (see ``min_samples``)."""
    return None if len(values) < min_samples(q) else percentile(values, q)


def summary(values: Iterable[float | None], *, ndigits: int = 1) -> dict[str, Any]:
    """n, missing, mean, min, p50, p95, p99, max of the non-None values (rounded).

    ``missing``: how many values were None (no measurement), not counted anywhere else. p95/p99 are None when
    n is too small for them, with the reason in ``omitted`` (e.g. ``{"p95": "n too small (4 < 20)"}``)."""
    xs: list[float] = []
    missing = 0
    for v in values:
        if v is None or math.isnan(float(v)):
            missing += 1
        else:
            xs.append(float(v))

    def r(v: float | None) -> float | None:
        return None if v is None else round(v, ndigits)

    out: dict[str, Any] = {"n": len(xs), "missing": missing, "mean": r(sum(xs) / len(xs)) if xs else None,
                           "min": r(min(xs)) if xs else None}
    omitted: dict[str, str] = {}
    for q in QUANTILES:
        out[f"p{q}"] = r(reported_percentile(xs, q))
        why = too_small(len(xs), q)
        if why:
            omitted[f"p{q}"] = why
    out["max"] = r(max(xs)) if xs else None
    if omitted:
        out["omitted"] = omitted
    return out


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
