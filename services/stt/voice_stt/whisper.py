"""``SpeechToText`` with faster-whisper (CTranslate2), decoding tuned for short phone utterances."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr
from voice_runtime.logging import get_logger

from .engine import Transcription

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


class WhisperSpeechToText:
    """A faster-whisper model loaded once. ``transcribe`` is blocking and safe to call from up to
    ``num_workers`` threads at once (CTranslate2 keeps one model replica per worker)."""

    def __init__(
        self,
        model_dir: Path,
        name: str,
        *,
        decode: DecodeOptions | None = None,
        cpu_threads: int = 0,
        num_workers: int = 1,
        compute_type: str = "int8",
        device: str = "cpu",
    ) -> None:
        from faster_whisper import WhisperModel

        self._name = name
        self.decode = decode or DecodeOptions()
        self._model = WhisperModel(
            str(model_dir), device=device, compute_type=compute_type, cpu_threads=cpu_threads,
            num_workers=num_workers,
        )
        self.multilingual = bool(self._model.model.is_multilingual)
        self._languages = frozenset(self._model.supported_languages)
        self._warned_languages: set[str] = set()
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return f"whisper:{self._name}"

    def _pick_language(self, language: str | None) -> str | None:
        if not self.multilingual:
            return "en"
        code = _language_code(language)
        if code is not None and code not in self._languages:
            with self._lock:
                if code not in self._warned_languages:
                    self._warned_languages.add(code)
                    log.warning("stt_language_unsupported", language=code, model=self._name)
            return None
        return code

    def transcribe(self, pcm16: bytes, sample_rate: int, language: str | None = None) -> Transcription:
        audio = pcm16_to_float(pcm16, sample_rate)
        duration = audio.size / WHISPER_RATE
        lang = self._pick_language(language)
        if audio.size == 0:
            return Transcription(text="", language=lang, duration_s=0.0)
        d = self.decode
        segments, info = self._model.transcribe(
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
        self.transcribe(noise, WHISPER_RATE, "en")
