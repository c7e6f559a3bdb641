"""Soak: calls back to back for N minutes, then what the services and NATS kept after the calls ended.

Memory growth is the least-squares slope of each service's RSS over the call-minutes served so far
(MB per call-minute; ≈ 0 when nothing leaks per call). Open file descriptors are compared before and
after; NATS consumers on every stream and entries in the `calls`/`history` KV buckets are compared
before and after, and the entries that belong to the soak's own calls are listed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import natsinfo
from .calls import CallResult, Target, Timeouts, conversation
from .procs import ProcessWatch
from .report import call_figures
from .speech import Utterance
from .stats import linear_slope, summary


@dataclass
class _Clock:
    finished_s: float = 0.0
    running: dict[int, float] = field(default_factory=dict)

    def call_minutes(self) -> float:
        now = time.monotonic()
        return (self.finished_s + sum(now - t for t in self.running.values())) / 60.0


async def soak(target: Target, questions: list[Utterance], minutes: float, concurrency: int, turns: int,
               t: Timeouts, watch: ProcessWatch, nats_url: str, settle_s: float = 15.0,
               sample_s: float = 5.0) -> dict[str, Any]:
    before = await natsinfo.state(nats_url)
    since = datetime.now(UTC).isoformat()
    base = watch.snapshot()
    clock = _Clock()
    results: list[CallResult] = []
    series: dict[str, list[tuple[float, float, int]]] = {}  # service -> (call-minutes, rss MB, fds)
    end_at = time.monotonic() + minutes * 60
    seq = 0

    async def worker(w: int) -> None:
        nonlocal seq
        k = w
        while time.monotonic() < end_at:
            seq += 1
            me = seq
            clock.running[me] = time.monotonic()
            qs = [questions[(k + j) % len(questions)] for j in range(turns)]
            k += 1
            try:
                r = await conversation(target, qs, t)
            finally:
                clock.finished_s += time.monotonic() - clock.running.pop(me)
            results.append(r)

    async def sampler() -> None:
        while True:
            cm = clock.call_minutes()
            for name, s in watch.snapshot().items():
                series.setdefault(name, []).append((cm, s.rss / 2**20, s.fds))
            await asyncio.sleep(sample_s)

    sampling = asyncio.create_task(sampler())
    try:
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    finally:
        sampling.cancel()
    await asyncio.sleep(settle_s)  # calls end: services free their state
    after_snap = watch.snapshot()
    call_ids = {r.call_id for r in results if r.call_id} | {r.call_sid for r in results if r.call_sid}
    after = await natsinfo.state(nats_url, call_ids)

    services: dict[str, Any] = {}
    for name, pts in series.items():
        pts = [p for p in pts if p[0] > 0]  # from the first call on
        warm = pts[len(pts) // 5:] if len(pts) >= 10 else pts  # skip the first fifth: caches filling
        slope = linear_slope([p[0] for p in warm], [p[1] for p in warm])
        b, a = base.get(name), after_snap.get(name)
        services[name] = {
            "rss_start_mb": round(b.rss / 2**20, 1) if b else None,
            "rss_end_mb": round(a.rss / 2**20, 1) if a else None,
            "rss_growth_mb_per_call_minute": None if slope is None else round(slope, 3),
            "fds_start": b.fds if b else None,
            "fds_end": a.fds if a else None,
            "threads_start": b.threads if b else None,
            "threads_end": a.threads if a else None,
        }
    turns_all = [tr for r in results for tr in r.turns]
    figures = call_figures(results)
    return {
        "minutes": minutes,
        "concurrency": concurrency,
        "calls": len(results),
        "calls_failed": sum(1 for r in results if r.error),
        "call_minutes": round(clock.finished_s / 60.0, 2),
        "turns": len(turns_all),
        "turns_without_reply": sum(1 for tr in turns_all if tr.v2v_ms is None),
        "voice_to_voice_ms": summary(tr.v2v_ms for tr in turns_all),
        "greeting_ms": figures["greeting_ms"],
        "playout": figures["playout"],
        "services": services,
        "nats_consumers": natsinfo.consumer_diff(before, after, since),
        "kv": {bucket: {"before": before["kv"].get(bucket, {}).get("entries"),
                        "after": after["kv"].get(bucket, {}).get("entries"),
                        "left_by_soak_calls": len(after["kv"].get(bucket, {}).get("of_bench_calls", [])),
                        "examples": after["kv"].get(bucket, {}).get("of_bench_calls", [])[:5]}
               for bucket in natsinfo.KV_WATCHED},
        "errors": sorted({r.error for r in results if r.error})[:10],
    }
