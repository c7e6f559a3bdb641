"""The voice-activity role: what media needs from any VAD model, and what every one shares.

One ``VoiceActivity`` per process holds the model; each call gets its own ``VadStream`` holding only that call's
state. Scoring runs inline on the event loop, by design: a window costs ~0.2 ms of CPU (Silero, 32 ms windows,
this project's 2-core machine), less than handing it to a thread would. So this base has no pool and no timeout:
it loads the model off the loop and states the window geometry. An adapter (``engines/silero.py``) implements
``load`` and ``stream``.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
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
