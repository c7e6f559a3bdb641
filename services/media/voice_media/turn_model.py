"""The end-of-turn role: what media needs from any turn model, and what every one shares.

A prediction takes tens of milliseconds of CPU, so it never runs on the event loop. This base runs the adapter's
blocking ``_predict`` in a pool of ``workers`` threads (one model instance serves every call of the process),
skips a request when ``max_queue`` are already waiting, gives up after ``timeout_s`` and records inference time
and failures. The pool's threads run ``nice`` steps below the process (Linux schedules threads one by one): a
prediction is model inference, and the event loop beside it scores every call's VAD in real time, as ingress's
loop paces every call's playout on the same cores. A turn model only shortens the silence hangover, so a skipped,
failed or late prediction is no answer (None): the hangover still ends the turn. An adapter
(``engines/smart_turn.py``) implements ``name``, ``load`` and ``_predict``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from voice_runtime import metrics
from voice_runtime.logging import get_logger, safe_error

from .settings import MediaSettings

log = get_logger(__name__)

SERVICE = "media"


@dataclass(frozen=True, slots=True)
class TurnPrediction:
    complete: bool
    probability: float
    seconds: float  # inference time (features + model)


def lower_thread_priority(steps: int) -> int:
    """Make the calling thread ``steps`` nicer than it is (at most 19); its nice value after, or -1 where the
    platform cannot say (no per-thread nice: the prediction simply runs at the process's priority)."""
    try:
        tid = threading.get_native_id()
        nice = min(19, os.getpriority(os.PRIO_PROCESS, tid) + steps)
        if steps > 0:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        return os.getpriority(os.PRIO_PROCESS, tid)
    except (AttributeError, OSError) as e:
        log.warning("turn_model_priority_unchanged", error=safe_error(e, 200))
        return -1


class TurnModel(ABC):
    def __init__(self, *, workers: int = 1, max_queue: int = 8, timeout_s: float = 2.0, nice: int = 0) -> None:
        self.workers, self.max_queue, self.timeout_s, self.nice = workers, max_queue, timeout_s, nice
        self.loaded = False
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="turn-model",
                                        initializer=lower_thread_priority, initargs=(nice,))
        self._queued = 0

    @property
    @abstractmethod
    def name(self) -> str:
        """A short, low-cardinality name for metric labels, e.g. ``smart_turn_v3``."""

    def load(self) -> None:
        """Load the model and warm it up (blocking; runs in the pool). Nothing by default."""
        return None

    @abstractmethod
    def _predict(self, audio: np.ndarray) -> TurnPrediction:
        """``audio``: the turn so far, int16 mono 16 kHz, ending with the current silence. Blocking."""

    async def start(self) -> None:
        """Load once, off the event loop."""
        if self.loaded:
            return
        started = time.perf_counter()
        await asyncio.get_running_loop().run_in_executor(self._pool, self.load)
        self.loaded = True
        log.info("turn_model_ready", turn_model=self.name, load_ms=round((time.perf_counter() - started) * 1000))

    async def predict(self, audio: np.ndarray) -> TurnPrediction | None:
        """The model's answer, or None when it was skipped (queue full), failed or took too long."""
        if self._queued >= self.max_queue:
            metrics.ERRORS.labels(SERVICE, "turn_model_skipped").inc()
            return None
        self._queued += 1
        try:
            future = asyncio.get_running_loop().run_in_executor(self._pool, self._predict, audio)
            prediction = await asyncio.wait_for(future, self.timeout_s)
        except TimeoutError:
            metrics.ERRORS.labels(SERVICE, "turn_model_timeout").inc()
            log.warning("turn_model_timeout", turn_model=self.name, timeout_s=self.timeout_s)
            return None
        except Exception as e:
            metrics.ERRORS.labels(SERVICE, "turn_model").inc()
            log.warning("turn_model_failed", turn_model=self.name, error=safe_error(e, 200))
            return None
        finally:
            self._queued -= 1
        metrics.INFERENCE_SECONDS.labels(SERVICE, self.name).observe(prediction.seconds)
        return prediction

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# what an engine module registers: builds the model from the service's settings (cheap; ``start`` loads it)
TurnModelFactory = Callable[[MediaSettings], TurnModel]
