"""The platform's processes, found by the TCP port they listen on, and their CPU / memory / fds.

Found by port rather than by command line: other copies of the services (test runs) may be running on
the same machine with other ports. Children are counted with their parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

DEFAULT_PORTS: dict[str, int] = {
    "control-api": 8000, "ingress": 8080, "media": 8081, "stt": 8082, "brain": 8083, "tts": 8084,
    "analytics": 8085, "llm": 8090, "nats": 4222,
}


def listening_pids(ports: dict[str, int]) -> dict[str, int]:
    by_port: dict[int, int] = {}
    with contextlib.suppress(psutil.AccessDenied):
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.pid and c.laddr:
                by_port.setdefault(c.laddr.port, c.pid)
    return {name: by_port[port] for name, port in ports.items() if port in by_port}


def _family(pid: int) -> list[psutil.Process]:
    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.Error:
        return []


@dataclass
class Sample:
    at: float
    cpu_s: float  # user + system, cumulative
    rss: int
    fds: int
    threads: int


def sample(pid: int) -> Sample | None:
    cpu = 0.0
    rss = fds = threads = 0
    procs = _family(pid)
    if not procs:
        return None
    for p in procs:
        try:
            with p.oneshot():
                t = p.cpu_times()
                cpu += t.user + t.system
                rss += p.memory_info().rss
                with contextlib.suppress(psutil.Error, AttributeError):
                    fds += p.num_fds()
                threads += p.num_threads()
        except psutil.Error:
            continue
    return Sample(time.monotonic(), cpu, rss, fds, threads)


@dataclass
class ProcessWatch:
    """Samples every service every ``interval`` seconds while running."""

    pids: dict[str, int]
    interval: float = 1.0
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _machine: tuple[float, float] | None = None  # (busy, total) CPU seconds of the whole machine at start
    machine_cpu_pct: float | None = None  # all cores busy share over the watched window (everything running)

    @staticmethod
    def _machine_times() -> tuple[float, float]:
        t = psutil.cpu_times()
        idle = t.idle + getattr(t, "iowait", 0.0)
        total = sum(t)
        return total - idle, total

    def snapshot(self) -> dict[str, Sample]:
        out: dict[str, Sample] = {}
        for name, pid in {**self.pids, "_bench_caller": os.getpid()}.items():
            s = sample(pid)
            if s is not None:
                out[name] = s
        return out

    async def _loop(self) -> None:
        while True:
            for name, s in self.snapshot().items():
                self.samples.setdefault(name, []).append(s)
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self.samples = {}
        self._machine = self._machine_times()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for name, s in self.snapshot().items():
            self.samples.setdefault(name, []).append(s)
        if self._machine is not None:
            busy, total = self._machine_times()
            d_total = total - self._machine[1]
            self.machine_cpu_pct = round(100.0 * (busy - self._machine[0]) / d_total, 1) if d_total > 0 else None

    def usage(self, calls: int, baseline: dict[str, Sample] | None = None) -> dict[str, Any]:
        """Per service over the watched window: CPU % (of one core), peak RSS, and both per call.

        ``_total`` sums the platform's services (not the bench's own process, listed as ``_bench_caller``);
        ``machine_cpu_pct_all_cores`` is how busy the whole machine was (other work included)."""
        out: dict[str, Any] = {}
        total_cpu = 0.0
        total_rss_delta = 0
        for name, ss in self.samples.items():
            dt = ss[-1].at - ss[0].at if len(ss) >= 2 else 0.0
            if dt <= 0:  # one sample, or none apart in time: no CPU figure (not 0 %)
                continue
            cpu_pct = 100.0 * (ss[-1].cpu_s - ss[0].cpu_s) / dt
            peak = max(s.rss for s in ss)
            base = baseline[name].rss if baseline and name in baseline else ss[0].rss
            if not name.startswith("_"):  # the bench's own process is shown, not counted
                total_cpu += cpu_pct
                total_rss_delta += peak - base
            out[name] = {
                "cpu_pct": round(cpu_pct, 1),
                "cpu_pct_per_call": round(cpu_pct / calls, 1) if calls else None,
                "rss_peak_mb": round(peak / 2**20, 1),
                "rss_growth_mb": round((peak - base) / 2**20, 1),
                "rss_growth_per_call_mb": round((peak - base) / 2**20 / calls, 2) if calls else None,
                "fds_max": max(s.fds for s in ss),
            }
        out["_total"] = {
            "cpu_pct": round(total_cpu, 1),
            "cpu_pct_per_call": round(total_cpu / calls, 1) if calls else None,
            "rss_growth_mb": round(total_rss_delta / 2**20, 1),
            "rss_growth_per_call_mb": round(total_rss_delta / 2**20 / calls, 2) if calls else None,
            "machine_cpu_pct_all_cores": self.machine_cpu_pct,
        }
        return out
