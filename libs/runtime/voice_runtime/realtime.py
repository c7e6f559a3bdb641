"""Real-time work first: what a service reports about its scheduling (README "Real-time work first").

- ``watch_loop_lag``: a task that asks the event loop for a timer every ``interval_s`` (20 ms, one audio frame) and
  records how much later it ran (``voice_event_loop_lag_seconds``, and the worst of the last 10-20 s in
  ``voice_event_loop_lag_max_seconds``). Ingress paces playout and media scores VAD on their loops: a lag of tens of
  milliseconds there is a late frame at the caller, whatever its cause (blocking work on the loop, or the CPU busy
  with other processes of higher priority).
- ``report_priority``: the process's nice value (``voice_process_nice``), so a dashboard shows that `make run`
  lowered the model stages' priority.
- ``report_threads``: the compute threads an engine's model was given (``voice_engine_threads``).
"""

from __future__ import annotations

import asyncio
import os

from . import metrics

LAG_WINDOW_S = 10.0


async def watch_loop_lag(service: str, interval_s: float = 0.02, window_s: float = LAG_WINDOW_S) -> None:
    """Runs until cancelled. Costs one timer per ``interval_s`` (a few microseconds of CPU each)."""
    loop = asyncio.get_running_loop()
    lag_hist, lag_max = metrics.LOOP_LAG.labels(service), metrics.LOOP_LAG_MAX.labels(service)
    lag_max.set(0.0)
    shown = worst = 0.0
    window_end = loop.time() + window_s
    while True:
        asked = loop.time()
        await asyncio.sleep(interval_s)
        now = loop.time()
        lag = max(0.0, now - asked - interval_s)
        lag_hist.observe(lag)
        worst = max(worst, lag)
        if lag > shown:  # a stall shows at once; it leaves the gauge one to two windows later
            shown = lag
            lag_max.set(lag)
        if now >= window_end:
            shown, worst, window_end = worst, 0.0, now + window_s
            lag_max.set(shown)


def process_nice() -> int:
    """This process's nice value (0 when the platform cannot say)."""
    try:
        return os.getpriority(os.PRIO_PROCESS, 0)
    except (AttributeError, OSError):  # no getpriority (not POSIX)
        return 0


def report_priority(service: str) -> int:
    nice = process_nice()
    metrics.PROCESS_NICE.labels(service).set(nice)
    return nice


def report_threads(service: str, engine: str, threads: int) -> None:
    metrics.ENGINE_THREADS.labels(service, engine).set(threads)
