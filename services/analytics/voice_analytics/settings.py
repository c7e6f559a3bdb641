"""Settings of the analytics service."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from voice_runtime.settings import CommonSettings, DatabaseSettings


class AnalyticsSettings(DatabaseSettings, CommonSettings):
    service_name: str = "analytics"
    http_port: int = Field(8085, validation_alias=AliasChoices("ANALYTICS_HTTP_PORT", "HTTP_PORT"))
