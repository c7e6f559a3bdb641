"""Settings of the ingress service."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from voice_runtime.settings import CommonSettings


class IngressSettings(CommonSettings):
    service_name: str = "ingress"
    http_port: int = Field(8080, validation_alias=AliasChoices("INGRESS_HTTP_PORT", "HTTP_PORT"))
