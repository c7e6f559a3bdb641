"""Settings of the tts service."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from voice_runtime.settings import CommonSettings


class TtsSettings(CommonSettings):
    service_name: str = "tts"
    http_port: int = Field(8084, validation_alias=AliasChoices("TTS_HTTP_PORT", "HTTP_PORT"))
