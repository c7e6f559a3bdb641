"""Models for tests of media logic: voice activity from loudness, a turn model with a fixed answer."""

from __future__ import annotations

import time

import numpy as np
from voice_media.turn_model import TurnModel, TurnPrediction
from voice_media.vad import VadStream, VoiceActivity

RATE = 16_000


class LoudStream:
    def probability(self, window: np.ndarray) -> float:
        return 0.95 if float(np.abs(window.astype(np.int32)).mean()) > 1000 else 0.01

    def reset(self) -> None:
        pass


class LoudnessVad(VoiceActivity):
    """Speech is whatever is loud: enough to drive turns deterministically."""

    name = "loudness"

    def __init__(self) -> None:
        super().__init__(sample_rate=RATE, window_samples=512)

    def stream(self) -> VadStream:
        return LoudStream()


class FixedTurnModel(TurnModel):
    """Answers ``complete`` to every question; records how many it was asked."""

    def __init__(self, complete: bool) -> None:
        super().__init__()
        self.complete = complete
        self.asked = 0

    @property
    def name(self) -> str:
        return "fixed"

    def _predict(self, audio: np.ndarray) -> TurnPrediction:
        started = time.perf_counter()
        self.asked += 1
        return TurnPrediction(self.complete, 1.0 if self.complete else 0.0, time.perf_counter() - started)


def tone(ms: int) -> np.ndarray:
    t = np.arange(ms * RATE // 1000) / RATE
    return (8000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)


def quiet(ms: int) -> np.ndarray:
    return np.zeros(ms * RATE // 1000, dtype=np.int16)
