"""The services' event loop lag over a bench phase, from their /metrics (README "Real-time work first").

Every service measures how late its event loop runs a 20 ms timer (``voice_event_loop_lag_seconds``). The bench
reads the histogram before and after a phase; the difference is what the phase's calls met: how many timers ran,
how many ran over 20 ms late (a frame's worth: a late frame at the caller when it is ingress or media), an upper
bound of the p99 (the histogram's bucket) and the nice value the process runs at.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

LAG = "voice_event_loop_lag_seconds"
SERVICES = ("ingress", "media", "stt", "brain", "tts")
FRAME_S = 0.02

Snapshot = dict[str, dict[str, Any]]  # service -> {"buckets": {le: count}, "nice": float | None}


def parse(text: str) -> dict[str, Any]:
    """The lag histogram's cumulative buckets and the process's nice value from one /metrics text."""
    buckets: dict[float, float] = {}
    nice: float | None = None
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == LAG + "_bucket":
                buckets[float(s.labels["le"])] = buckets.get(float(s.labels["le"]), 0.0) + s.value
            elif s.name == "voice_process_nice":
                nice = s.value
    return {"buckets": buckets, "nice": nice}


async def scrape(ports: dict[str, int], services: tuple[str, ...] = SERVICES) -> Snapshot:
    out: Snapshot = {}
    async with httpx.AsyncClient(timeout=3.0) as client:
        for name in services:
            if name not in ports:
                continue
            with contextlib.suppress(httpx.HTTPError):
                r = await client.get(f"http://127.0.0.1:{ports[name]}/metrics")
                if r.status_code == 200:
                    out[name] = parse(r.text)
    return out


def figures(before: Snapshot, after: Snapshot) -> dict[str, Any]:
    """Per service: timers run during the phase, how many ran more than 20 ms late, the p99 bucket, the nice value."""
    out: dict[str, Any] = {}
    for name, a in after.items():
        b = before.get(name, {}).get("buckets", {})
        delta = {le: n - b.get(le, 0.0) for le, n in sorted(a["buckets"].items())}
        total = delta.get(math.inf, 0.0)
        if not total:
            continue
        within_frame = max((n for le, n in delta.items() if le <= FRAME_S), default=0.0)
        p99 = next((le for le, n in delta.items() if n >= 0.99 * total), math.inf)
        out[name] = {"timers": int(total), "over_20ms": int(total - within_frame),
                     "p99_le_ms": None if math.isinf(p99) else round(p99 * 1000, 1), "nice": a.get("nice")}
    return out


def line(lag: dict[str, Any]) -> str:
    """One line for the report's headline."""
    parts = [f"{name} {f['over_20ms']} of {f['timers']} over 20 ms late (p99 ≤ "
             f"{'∞' if f['p99_le_ms'] is None else f['p99_le_ms']} ms, nice {_nice(f['nice'])})"
             for name, f in lag.items()]
    return "event loop lag (20 ms timers): " + "; ".join(parts)


def _nice(v: float | None) -> str:
    return "?" if v is None else str(int(v))
