"""Settings of the brain service."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from voice_runtime.settings import CommonSettings


class BrainSettings(CommonSettings):
    service_name: str = "brain"
    http_port: int = Field(8083, validation_alias=AliasChoices("BRAIN_HTTP_PORT", "HTTP_PORT"))
