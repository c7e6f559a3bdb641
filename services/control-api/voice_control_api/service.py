"""The control-api service."""

from __future__ import annotations

from voice_runtime.service import Service

from .settings import ControlApiSettings


class ControlApiService(Service):
    name = "control-api"

    def __init__(self, settings: ControlApiSettings) -> None:
        super().__init__(settings)
        self.settings: ControlApiSettings = settings
