"""Settings of the ingress service (each transport's own settings are declared beside it and mixed in)."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from voice_runtime.calltoken import CallTokenSettings
from voice_runtime.settings import CommonSettings

from .transports.chat import ChatSettings
from .transports.sip import SipSettings
from .transports.twilio import TwilioStreamSettings
from .transports.webrtc import WebRtcSettings


class IngressSettings(TwilioStreamSettings, ChatSettings, WebRtcSettings, SipSettings, CallTokenSettings,
                      CommonSettings):
    service_name: str = "ingress"
    http_port: int = Field(8080, validation_alias=AliasChoices("INGRESS_HTTP_PORT", "HTTP_PORT"))
    playout_lead_ms: int = Field(60, ge=0, le=400, description="Agent audio sent ahead of real time")
    playout_gap_ms: int = Field(
        2000, ge=100, le=10_000,
        description="A reply whose audio stops arriving is given up after this long without a frame of it while "
        "it is the one being played (its final frame was lost, or brain superseded it)",
    )
    start_timeout_s: float = Field(10.0, description="Time a caller connection may take to bind to its call")
    caller_frames_per_message: int = Field(
        2, ge=1, le=5,
        description="20 ms caller frames per audio.in message once this replica carries CALLER_FRAMES_FROM_CALLS "
        "calls: fewer bus messages for ingress, nats-server and media to handle, for up to (n-1) x 20 ms more "
        "before media hears a frame",
    )
    caller_frames_from_calls: int = Field(
        20, ge=0, description="Calls on this replica from which caller frames are batched (below: one frame per "
        "message, no added delay); 0: always",
    )

    def caller_frames_for(self, calls: int) -> int:
        """Caller frames per ``audio.in`` message for a replica carrying ``calls`` calls."""
        return self.caller_frames_per_message if calls >= self.caller_frames_from_calls else 1
