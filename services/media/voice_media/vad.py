"""The voice-activity role: what media needs from any VAD model, and what every one shares.

One ``VoiceActivity`` per process holds the model; each call gets its own ``VadStream`` holding only that call's
state. Scoring runs inline on the event loop, by design: a window costs ~0.1 ms of CPU (Silero, 32 ms windows,
this project's 2-core machine), less than handing it to a thread would. So this base has no pool and no timeout:
it loads the model off the loop and states the window geometry. An adapter (``engines/silero.py``) implements
``load`` and ``stream``, and may score the windows of many calls in one model run (``score_many``: media gathers
the windows that are ready in one pass of its event loop; Silero costs ~96 µs a window alone, ~45 in eights).
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
from voice_runtime.logging import get_logger

from .settings import MediaSettings

log = get_logger(__name__)


class VadStream(Protocol):
    """Speech probability of consecutive windows of one audio stream (stateful)."""

    def probability(self, window: np.ndarray) -> float:
        """``window``: ``window_samples`` int16 samples following the previous window."""
        ...

    def reset(self) -> None: ...


class VoiceActivity(ABC):
    """A voice-activity model for every call of this process."""

    name: str = "vad"

    def __init__(self, *, sample_rate: int, window_samples: int) -> None:
        self.sample_rate = sample_rate
        self.window_samples = window_samples
        self.loaded = False

    @property
    def window_ms(self) -> int:
        return self.window_samples * 1000 // self.sample_rate

    def load(self) -> None:
        """Load the model (blocking; runs in a worker thread). Nothing by default."""
        return None

    @abstractmethod
    def stream(self) -> VadStream:
        """A new call's state (cheap: the model is shared)."""

    def score_many(self, streams: Sequence[VadStream], windows: Sequence[np.ndarray]) -> list[float]:
        """The next window of each of several streams (distinct ones, this model's), in order: the same
        probabilities as ``stream.probability(window)`` one by one, which is what this default does."""
        return [s.probability(w) for s, w in zip(streams, windows, strict=True)]

    async def start(self) -> None:
        """Load once, off the event loop."""
        if self.loaded:
            return
        started = time.perf_counter()
        await asyncio.to_thread(self.load)
        self.loaded = True
        log.info("vad_ready", vad=self.name, load_ms=round((time.perf_counter() - started) * 1000))


# what an engine module registers: builds the model from the service's settings (cheap; ``start`` loads it)
VadFactory = Callable[[MediaSettings], VoiceActivity]
