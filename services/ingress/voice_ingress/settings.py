"""Settings of the ingress service."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from voice_runtime.settings import CommonSettings


class IngressSettings(CommonSettings):
    service_name: str = "ingress"
    http_port: int = Field(8080, validation_alias=AliasChoices("INGRESS_HTTP_PORT", "HTTP_PORT"))
    playout_lead_ms: int = Field(60, ge=0, le=400, description="Agent audio sent ahead of real time")
    max_ws_message_bytes: int = Field(16 * 1024, description="Larger Twilio messages are a protocol error")
    start_timeout_s: float = Field(10.0, description="Time a media stream may take to send `start`")
