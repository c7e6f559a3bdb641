"""The ingress service: wiring of its handlers to the bus."""

from __future__ import annotations

from voice_runtime.service import Service

from .settings import IngressSettings


class IngressService(Service):
    name = "ingress"

    def __init__(self, settings: IngressSettings) -> None:
        super().__init__(settings)
        self.settings: IngressSettings = settings
