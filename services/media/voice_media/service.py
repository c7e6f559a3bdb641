"""The media service: wiring of its handlers to the bus."""

from __future__ import annotations

from voice_runtime.service import Service

from .settings import MediaSettings


class MediaService(Service):
    name = "media"

    def __init__(self, settings: MediaSettings) -> None:
        super().__init__(settings)
        self.settings: MediaSettings = settings
