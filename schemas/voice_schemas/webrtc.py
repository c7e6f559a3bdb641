"""Browser calls (WebRTC): what control-api asks ingress, and what ingress answers (core NATS request/reply).

``ingress.rpc.webrtc.offer`` (``subjects.ingress_rpc``) is served by every ingress replica in one queue group: the
one that takes an offer verifies its call token (channel ``webrtc``), uses it up, creates the call for the granted
agent and answers with the SDP answer once ICE gathering is done (no trickle). Every answer is a ``WebRtcAnswer``.
Hanging a browser call up needs no request: it is the ``control.hangup`` command on the bus, which the replica
holding the call acts on.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

CHANNEL = "webrtc"
OFFER = "offer"
MAX_SDP_CHARS = 32 * 1024  # a browser's audio offer is 3-6 KiB


class WebRtcOffer(BaseModel):
    """A browser's SDP offer, with the call token control-api minted for it (channel ``webrtc``)."""

    model_config = ConfigDict(extra="ignore")
    token: str = Field(max_length=2048)
    type: Literal["offer"] = "offer"
    sdp: str = Field(min_length=1, max_length=MAX_SDP_CHARS)


class WebRtcError(StrEnum):
    invalid = "invalid"  # the request or its SDP is malformed, or the offer has no single audio section
    refused = "refused"  # the call token is missing, invalid, expired, for another channel, or used already
    not_found = "not_found"  # no such active agent in the granted tenant
    busy = "busy"  # this replica has no room (calls or UDP ports) for another browser call
    unavailable = "unavailable"  # this deployment cannot take browser calls (no CALL_TOKEN_KEY) or failed


class WebRtcAnswer(BaseModel):
    """What ingress answers: ``error`` set, or the call and its SDP answer."""

    model_config = ConfigDict(extra="ignore")
    error: WebRtcError | None = None
    detail: str | None = None
    call_id: str | None = None
    type: Literal["answer"] = "answer"
    sdp: str | None = None
