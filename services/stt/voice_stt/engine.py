"""The speech-to-text role: what the stt service needs from any recognizer, and what every recognizer shares.

An adapter (``engines/whisper.py``) implements ``model_name``, ``load`` and ``_transcribe``, all blocking. This
base runs them off the event loop in a pool of ``workers`` threads, bounds each transcription with a timeout
and records the span, the inference time and the failures, so neither the adapters nor the service do.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from opentelemetry import trace
from voice_runtime import metrics
from voice_runtime.logging import get_logger

from .settings import SttSettings

log = get_logger(__name__)
_tracer = trace.get_tracer("voice.stt")

SERVICE = "stt"
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Transcription:
    """The final text of one utterance."""

    text: str
    language: str | None = None
    # seconds of audio that were transcribed
    duration_s: float = 0.0
    # mean token log-probability of the decoded text (None when the recognizer has none)
    avg_logprob: float | None = None
    # probability that the audio held no speech at all (None when unknown)
    no_speech_prob: float | None = None


def words_or_nothing(text: str) -> str:
    """``text`` stripped, or "" when it holds no letter or digit: a recognizer that hears silence or noise may
    still emit a lone "." or "…" (Whisper does on some CPUs), and that is no words, not a turn to answer.
    ``SpeechToText.transcribe`` applies it to every engine's result; an engine that joins the texts of several
    windows applies it per window too (Moonshine), so that no stray "." is joined in."""
    text = text.strip()
    return text if any(ch.isalnum() for ch in text) else ""


class TranscriptionTimeout(TimeoutError):
    """The recognizer did not answer within the timeout (its thread may still be busy)."""


class SpeechToText(ABC):
    """A recognizer on this replica. ``start`` loads it; ``transcribe`` may be awaited from many handlers at once
    (at most ``workers`` run, the rest wait for a thread)."""

    # whether partial transcripts are on when STT_PARTIALS does not say: re-decoding the growing utterance every
    # half second is cheap only for an engine whose cost follows the audio's length
    partials_by_default: ClassVar[bool] = False

    def __init__(self, *, workers: int = 1, timeout_s: float = 25.0) -> None:
        self.workers = workers
        self.timeout_s = timeout_s
        self.loaded = False
        self.in_flight = 0  # transcriptions submitted and not finished (running or waiting for a thread)
        self._count_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stt")

    @property
    def busy(self) -> bool:
        """Every thread has work: another transcription would wait."""
        return self.in_flight >= self.workers

    # ------------------------------------------------------------ what an adapter implements
    @property
    @abstractmethod
    def model_name(self) -> str:
        """A short, low-cardinality name for metric labels, e.g. ``whisper:tiny.en``."""

    def load(self) -> None:
        """Load the model and warm it up (blocking; runs in the pool). Nothing by default."""
        return None

    @abstractmethod
    def _transcribe(self, pcm16: bytes, sample_rate: int, language: str | None) -> Transcription:
        """Transcribe PCM16 little-endian mono audio (blocking). ``language`` is a hint (ISO 639-1)."""

    # ------------------------------------------------------------ what the service calls
    async def start(self) -> None:
        """Load once, off the event loop."""
        if self.loaded:
            return
        started = time.perf_counter()
        await self._in_pool(self.load)
        self.loaded = True
        log.info("stt_engine_ready", model=self.model_name, workers=self.workers,
                 load_ms=round((time.perf_counter() - started) * 1000))

    async def transcribe(self, pcm16: bytes, sample_rate: int, language: str | None = None, *,
                         attributes: dict[str, str | int] | None = None, partial: bool = False,
                         timeout_s: float | None = None) -> Transcription:
        """``attributes`` label the span (call, tenant, turn); ``partial`` marks a re-decode of an utterance in
        progress (span attribute ``stt.partial``); ``timeout_s`` overrides the engine's timeout."""
        audio_ms = len(pcm16) * 1000 // (2 * sample_rate or 1)
        timeout = self.timeout_s if timeout_s is None else timeout_s
        with _tracer.start_as_current_span(
            "stt transcribe", attributes={**(attributes or {}), "stt.model": self.model_name, "stt.audio_ms": audio_ms,
                                          "stt.partial": partial},
        ) as span:
            started = time.perf_counter()
            try:
                result = await asyncio.wait_for(self._job(lambda: self._transcribe(pcm16, sample_rate, language)),
                                                timeout)
            except TimeoutError as e:
                metrics.ERRORS.labels(SERVICE, "inference_timeout").inc()
                span.record_exception(e)
                raise TranscriptionTimeout(f"{self.model_name} took longer than {timeout} s") from e
            except Exception as e:
                metrics.ERRORS.labels(SERVICE, "inference").inc()
                span.record_exception(e)
                raise
            elapsed = time.perf_counter() - started
            words = words_or_nothing(result.text)  # whatever the engine: a lone "." is no words, not a turn
            if words != result.text:
                result = dataclasses.replace(result, text=words)
            span.set_attribute("stt.inference_ms", round(elapsed * 1000, 1))
            span.set_attribute("stt.language", result.language or "")
        if not partial:  # the histogram keeps meaning "time to transcribe one utterance"
            metrics.INFERENCE_SECONDS.labels(SERVICE, self.model_name).observe(elapsed)
        return result

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _in_pool(self, fn: Callable[[], R]) -> asyncio.Future[R]:
        return asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def _job(self, fn: Callable[[], R]) -> asyncio.Future[R]:
        """``fn`` in the pool, counted in ``in_flight`` until its thread is done with it (a timed-out job that is
        still running keeps counting; one cancelled before it started does not)."""
        with self._count_lock:
            self.in_flight += 1
        try:
            job = self._pool.submit(fn)
        except RuntimeError:  # the pool is shut down
            self._job_done(None)
            raise
        job.add_done_callback(self._job_done)
        return asyncio.wrap_future(job)

    def _job_done(self, _: object) -> None:
        with self._count_lock:
            self.in_flight -= 1


# what an engine module registers: builds the engine from the service's settings (cheap; ``start`` loads it)
EngineFactory = Callable[[SttSettings], SpeechToText]
