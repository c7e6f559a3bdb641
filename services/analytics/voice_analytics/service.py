"""The analytics service: wiring of its handlers to the bus."""

from __future__ import annotations

from voice_runtime.service import Service

from .settings import AnalyticsSettings


class AnalyticsService(Service):
    name = "analytics"

    def __init__(self, settings: AnalyticsSettings) -> None:
        super().__init__(settings)
        self.settings: AnalyticsSettings = settings
