"""``TextToSpeech`` with piper (ONNX VITS voices, espeak-ng phonemes); yields one array per sentence."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np


class PiperTextToSpeech:
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
