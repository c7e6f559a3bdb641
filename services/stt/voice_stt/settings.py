"""Settings of the stt service."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from voice_runtime.settings import CommonSettings


class SttSettings(CommonSettings):
    service_name: str = "stt"
    http_port: int = Field(8082, validation_alias=AliasChoices("STT_HTTP_PORT", "HTTP_PORT"))
