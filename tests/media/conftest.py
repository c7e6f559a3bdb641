"""Media fixtures: speech made with piper (joe voice) at the bus format, and the real models."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import pytest
from voice_devstack.speech import speech_int16
from voice_media.turn_model import TurnModel
from voice_media.vad import VoiceActivity

RATE = 16_000
SENTENCE = "Can you tell me what time you open on Sunday?"
UNFINISHED = "I was wondering if you could"


@dataclass(frozen=True)
class Speech:
    """Int16 16 kHz audio and where its speech really is (from the waveform's energy)."""

    audio: np.ndarray
    onset_ms: int
    offset_ms: int


def speech_bounds(audio: np.ndarray, db: float = -40.0) -> tuple[int, int]:
    """First and last 10 ms block louder than ``db`` dBFS."""
    block = RATE // 100
    n = len(audio) // block
    blocks = audio[: n * block].astype(np.float64).reshape(n, block) / 32768.0
    rms = np.sqrt((blocks**2).mean(axis=1)) + 1e-12
    loud = np.nonzero(20 * np.log10(rms) > db)[0]
    return int(loud[0]) * 10, int(loud[-1] + 1) * 10


@pytest.fixture(scope="session")
def piper_speech() -> dict[str, Speech]:
    out: dict[str, Speech] = {}
    for key, text in (("sentence", SENTENCE), ("unfinished", UNFINISHED)):
        audio = speech_int16(text, RATE, deterministic=True)  # same audio every run
        out[key] = Speech(audio, *speech_bounds(audio))
    # a 300 ms burst of voiced speech ("mm-hmm" length), 10 ms fades
    s = out["sentence"]
    start = (s.onset_ms + 400) * RATE // 1000
    burst = s.audio[start : start + 300 * RATE // 1000].astype(np.float32)
    fade = np.linspace(0.0, 1.0, RATE // 100, dtype=np.float32)
    burst[: fade.size] *= fade
    burst[-fade.size :] *= fade[::-1]
    out["burst"] = Speech(burst.astype(np.int16), 0, 300)
    return out


def phone_band(audio: np.ndarray) -> np.ndarray:
    """What ingress makes of a Twilio call: 8 kHz G.711 mu-law, decoded and resampled to 16 kHz."""
    import soxr

    x = soxr.resample(audio.astype(np.float32) / 32768.0, RATE, 8000)
    mu = 255.0
    y = np.sign(x) * np.log1p(mu * np.minimum(np.abs(x), 1.0)) / np.log1p(mu)
    y = np.round(y * 127.0) / 127.0  # 8-bit companded
    x = np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu
    return (np.clip(soxr.resample(x, 8000, RATE), -1.0, 1.0) * 32767).astype(np.int16)


def with_silence(audio: np.ndarray, before_ms: int, after_ms: int) -> np.ndarray:
    return np.concatenate([
        np.zeros(before_ms * RATE // 1000, np.int16), audio, np.zeros(after_ms * RATE // 1000, np.int16)
    ])


@pytest.fixture(scope="session")
async def silero() -> AsyncIterator[VoiceActivity]:
    from voice_media.engines.silero import SileroVoiceActivity

    vad = SileroVoiceActivity()
    await vad.start()
    yield vad


@pytest.fixture(scope="session")
async def smart_turn() -> AsyncIterator[TurnModel]:
    from voice_media.engines.smart_turn import SmartTurnV3

    model = SmartTurnV3()
    await model.start()  # loads and warms up
    yield model
    model.close()
