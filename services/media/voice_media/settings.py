"""Settings of the media service."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from voice_runtime.settings import CommonSettings


class MediaSettings(CommonSettings):
    service_name: str = "media"
    http_port: int = Field(8081, validation_alias=AliasChoices("MEDIA_HTTP_PORT", "HTTP_PORT"))
