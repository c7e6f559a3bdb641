"""The stt service: wiring of its handlers to the bus."""

from __future__ import annotations

from voice_runtime.service import Service

from .settings import SttSettings


class SttService(Service):
    name = "stt"

    def __init__(self, settings: SttSettings) -> None:
        super().__init__(settings)
        self.settings: SttSettings = settings
