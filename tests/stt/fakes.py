"""A recognizer for tests of stt logic: answers with fixed text, records what it was asked, may hold callers."""

from __future__ import annotations

import threading
from collections.abc import Callable

from voice_stt.engine import SpeechToText, Transcription


class FakeSTT(SpeechToText):
    def __init__(self, text: str = "hello there", *, workers: int = 1, gate: threading.Event | None = None,
                 text_of: Callable[[bytes], str] | None = None) -> None:
        super().__init__(workers=workers)
        self.text = text
        self.text_of = text_of  # when set, the text is made from the audio (to tell re-decodes apart)
        self.gate = gate  # when set, each transcription waits for it (to observe concurrency)
        self.calls: list[tuple[int, int, str | None]] = []
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return "fake:stt"

    def _transcribe(self, pcm16: bytes, sample_rate: int, language: str | None) -> Transcription:
        with self._lock:
            self.calls.append((len(pcm16), sample_rate, language))
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            if self.gate is not None:
                self.gate.wait(5.0)
            text = self.text_of(pcm16) if self.text_of is not None else self.text
            return Transcription(text, language or "en", len(pcm16) / 2 / sample_rate)
        finally:
            with self._lock:
                self.running -= 1
