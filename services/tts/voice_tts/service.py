"""The tts service: wiring of its handlers to the bus."""

from __future__ import annotations

from voice_runtime.service import Service

from .settings import TtsSettings


class TtsService(Service):
    name = "tts"

    def __init__(self, settings: TtsSettings) -> None:
        super().__init__(settings)
        self.settings: TtsSettings = settings
