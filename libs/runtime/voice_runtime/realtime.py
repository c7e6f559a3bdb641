"""Real-time work first: what a service reports about its scheduling (README "Real-time work first").

- ``watch_loop_lag``: a task that asks the event loop for a timer every ``interval_s`` (20 ms, one audio frame) and
  records how much later it ran (``voice_event_loop_lag_seconds``, and the worst of the last 10-20 s in
  ``voice_event_loop_lag_max_seconds``). Ingress paces playout and media scores VAD on their loops: a lag of tens of
  milliseconds there is a late frame at the caller, whatever its cause (blocking work on the loop, or the CPU busy
  with other processes of higher priority).
- ``report_priority``: the process's nice value (``voice_process_nice``), so a dashboard shows that `make run`
  lowered the model stages' priority.
- ``report_threads``: the compute threads an engine's model was given (``voice_engine_threads``).
- ``freeze_heap``: once the service has started, what it built to start (modules, the app, models' Python
  objects) is moved out of the garbage collector's sight (``gc.freeze``). A full collection walks every tracked
  object: with the startup heap in it, one took 170-250 ms on this project's 2-core machine, a stall of the loop
  that paces every call's audio (the playout lead is 60 ms); without it, only what was made since.
"""

from __future__ import annotations

import asyncio
import gc
import os

from . import metrics
from .logging import get_logger

log = get_logger(__name__)

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


def freeze_heap() -> int:
    """Collect once, then freeze what is left (it lives as long as the process); call it once the service has
    started. Returns how many objects were frozen. A cycle made later is still collected; one made before was
    collected here."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("heap_frozen", objects=frozen)
    return frozen


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
