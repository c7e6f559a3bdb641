"""The text-to-speech role: what the tts service needs from any synthesizer, and what every synthesizer shares.

An engine (``engines/piper.py``) names the voices it can load (``voice_specs``); a loaded ``Voice`` yields audio
one piece at a time, blocking. This base loads voices and runs synthesis off the event loop in a pool of
``workers`` threads (calls take turns piece by piece), bounds each piece with a timeout and records synthesis
time and failures, so neither the engines nor the service do.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import numpy as np
from voice_runtime import metrics
from voice_runtime.logging import get_logger

from .settings import TtsSettings
from .voices import Voices, VoiceSpec

log = get_logger(__name__)

SERVICE = "tts"
WARM_UP_TEXT = "Hello."
R = TypeVar("R")


class Voice(Protocol):
    """One loaded voice. ``synthesize`` blocks (CPU bound): the engine pulls it from a worker thread."""

    @property
    def voice_name(self) -> str:
        """A short, low-cardinality name for logs and metric labels, e.g. ``piper:joe``."""
        ...

    @property
    def sample_rate(self) -> int:
        """Rate of the audio ``synthesize`` yields."""
        ...

    def synthesize(self, text: str) -> Iterator[np.ndarray]:
        """Float32 mono audio in [-1, 1], one array per piece as soon as it is ready (a sentence for piper).

        Lazy: work happens as the iterator is advanced, so a caller can stop between pieces.
        """
        ...


class TextToSpeech(ABC):
    """A synthesis engine on this replica: its voices by name (the default loaded by ``start``, others on first
    use), and ``run`` for the blocking steps of speaking a chunk."""

    def __init__(self, *, default_voice: str, workers: int = 1, timeout_s: float = 20.0) -> None:
        self.voices = Voices(self.voice_specs(), default=default_voice)
        self.workers = workers
        self.timeout_s = timeout_s
        self.loaded = False
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tts")

    @abstractmethod
    def voice_specs(self) -> tuple[VoiceSpec, ...]:
        """The voices this engine can load, by name and aliases."""

    async def start(self) -> None:
        """Load the default voice and synthesize once (espeak and onnxruntime initialise lazily).

        Not bounded by the synthesis timeout: on a busy machine (a replica restarted while its peers serve calls)
        loading can take longer than any one sentence may, and a replica that gave up here would never come back.
        Readiness says when it is done."""
        if self.loaded:
            return
        started = time.perf_counter()
        key = self.voices.resolve(None)
        cached = self.voices.loaded.get(key)
        voice: Voice = cached if cached is not None else await self.run(self.voices.get, key, bounded=False)
        loaded = time.perf_counter()

        def warm_up() -> int:
            return sum(1 for _ in voice.synthesize(WARM_UP_TEXT))

        await self.run(warm_up, bounded=False)
        self.loaded = True
        log.info("tts_voice_ready", voice=voice.voice_name, load_ms=round((loaded - started) * 1000),
                 warmup_ms=round((time.perf_counter() - loaded) * 1000))

    async def voice(self, name: str | None) -> Voice:
        """The voice ``name`` means (the default for None or an unknown name), loaded off the loop the first time."""
        key = self.voices.resolve(name)
        loaded = self.voices.loaded.get(key)
        return loaded if loaded is not None else await self.run(self.voices.get, key)

    async def run(self, fn: Callable[..., R], *args: Any, bounded: bool = True) -> R:
        """``fn(*args)`` in the synthesis pool, bounded by the engine's timeout (the speaker's blocking steps) unless
        ``bounded`` is False."""
        future = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        try:
            return await asyncio.wait_for(future, self.timeout_s if bounded else None)
        except TimeoutError:
            metrics.ERRORS.labels(SERVICE, "synthesis_timeout").inc()
            raise

    def record(self, voice: Voice, synth_s: float, failed: bool) -> None:
        """Synthesis time of one chunk, and whether it failed."""
        metrics.INFERENCE_SECONDS.labels(SERVICE, voice.voice_name).observe(synth_s)
        if failed:
            metrics.ERRORS.labels(SERVICE, "synthesis").inc()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# what an engine module registers: builds the engine from the service's settings (cheap; ``start`` loads it)
EngineFactory = Callable[[TtsSettings], TextToSpeech]
