"""Fakes for tts unit tests: a synthesizer that yields prepared pieces, a publisher that records frames."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from voice_schemas.audio import AudioFrame


class FakeTTS:
    """Yields the given float pieces (one per 'sentence'); counts pieces produced; may fail at a piece."""

    def __init__(self, pieces: list[np.ndarray], sample_rate: int = 16_000, fail_at: int | None = None) -> None:
        self.pieces, self._rate, self.fail_at = pieces, sample_rate, fail_at
        self.produced = 0
        self.threads: set[str] = set()

    @property
    def voice_name(self) -> str:
        return "fake:voice"

    @property
    def sample_rate(self) -> int:
        return self._rate

    def synthesize(self, text: str) -> Iterator[np.ndarray]:
        for i, piece in enumerate(self.pieces):
            self.threads.add(threading.current_thread().name)
            if self.fail_at == i:
                raise RuntimeError("synthesis exploded")
            self.produced += 1
            yield piece


class Recorder:
    """An async publish function that records frames and may run a hook after each one."""

    def __init__(self, after: Callable[[AudioFrame], None] | None = None) -> None:
        self.frames: list[AudioFrame] = []
        self.after = after

    async def __call__(self, frame: AudioFrame) -> None:
        self.frames.append(frame)
        if self.after is not None:
            self.after(frame)


async def run_inline(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def tone(seconds: float, rate: int, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
