"""The brain service: wiring of its handlers to the bus."""

from __future__ import annotations

from voice_runtime.service import Service

from .settings import BrainSettings


class BrainService(Service):
    name = "brain"

    def __init__(self, settings: BrainSettings) -> None:
        super().__init__(settings)
        self.settings: BrainSettings = settings
