"""Fakes for tts unit tests: a voice that yields prepared pieces, an engine with that voice, a publisher that
records frames."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from voice_schemas.audio import AudioFrame
from voice_tts.engine import TextToSpeech
from voice_tts.voices import VoiceSpec


class FakeTTS:
    """Yields the given float pieces (one per 'sentence'); counts pieces produced; may fail at a piece; with
    ``gate`` set, waits for it before every piece after the first (to act while a chunk is being spoken)."""

    def __init__(self, pieces: list[np.ndarray], sample_rate: int = 16_000, fail_at: int | None = None) -> None:
        self.pieces, self._rate, self.fail_at = pieces, sample_rate, fail_at
        self.produced = 0
        self.threads: set[str] = set()
        self.texts: list[str] = []
        self.gate: threading.Event | None = None

    @property
    def voice_name(self) -> str:
        return "fake:voice"

    @property
    def sample_rate(self) -> int:
        return self._rate

    def synthesize(self, text: str) -> Iterator[np.ndarray]:
        self.texts.append(text)
        for i, piece in enumerate(self.pieces):
            if i and self.gate is not None:
                self.gate.wait(5.0)
            self.threads.add(threading.current_thread().name)
            if self.fail_at == i:
                raise RuntimeError("synthesis exploded")
            self.produced += 1
            yield piece


class FakeEngine(TextToSpeech):
    """An engine whose only voice is ``voice`` (named "fake")."""

    def __init__(self, voice: FakeTTS, *, timeout_s: float = 5.0) -> None:
        self.fake_voice = voice
        super().__init__(default_voice="fake", timeout_s=timeout_s)

    def voice_specs(self) -> tuple[VoiceSpec, ...]:
        return (VoiceSpec("fake", "a test voice", lambda: self.fake_voice),)


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
