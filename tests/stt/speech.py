"""Test speech: piper-made utterances at the bus rate, and a G.711 mu-law round trip like a phone line."""

from __future__ import annotations

import functools

import numpy as np
import soxr
from voice_tts.engine import TextToSpeech
from voice_tts.voices import Voices


@functools.cache
def piper() -> TextToSpeech:
    return Voices().get(None)


def speech_float(text: str, rate: int = 16_000) -> np.ndarray:
    tts = piper()
    audio = np.concatenate(list(tts.synthesize(text)))
    return soxr.resample(audio, tts.sample_rate, rate, quality="HQ").astype(np.float32)


def to_pcm16(audio: np.ndarray) -> bytes:
    return np.rint(np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def speech_pcm16(text: str, rate: int = 16_000) -> bytes:
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
    words = "".join(c.lower() if c.isalnum() or c.isspace() else " " for c in text).split()
    return words


def word_error_rate(expected: str, got: str) -> float:
    ref, hyp = normalize(expected), normalize(got)
    d = list(range(len(hyp) + 1))
    for i in range(1, len(ref) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(hyp) + 1):
            cur = min(d[j] + 1, d[j - 1] + 1, prev + (ref[i - 1] != hyp[j - 1]))
            prev, d[j] = d[j], cur
    return d[len(hyp)] / max(1, len(ref))
