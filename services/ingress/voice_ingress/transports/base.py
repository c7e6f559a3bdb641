"""A caller transport: one caller connection in one wire protocol, behind a small interface.

``CallSession`` drives every transport the same way and knows no wire format. A transport decodes the
protocol's inbound messages into the events below and encodes the call's outbound audio, marks and clears
into protocol messages that it sends. Adding a protocol is a new module in this package (a ``Transport`` and
the ``Endpoint`` that accepts its connections), never an edit of the session.

The contract every transport keeps:

- Audio crosses the interface as PCM16 mono 16 kHz frames of 20 ms (``voice_schemas.audio.FRAME_BYTES``), in
  both directions; codecs, resampling and packetization are the transport's.
- Outbound order is playout order: audio frames with marks between them. The session paces audio in real
  time, ``playout_lead_ms`` ahead, so whatever the transport or the far end queues stays that short.
- ``MarkPlayed`` is the transport's playout clock report: a mark comes back once the audio sent before it has
  actually played to the caller (Twilio echoes marks; a transport that paces its own sender, RTP or WebRTC,
  reports a mark when its clock passes it). Marks of cleared audio may come back too; the session ignores them.
- ``clear`` drops all agent audio queued in the transport or at the far end, at once. A transport whose queue is
  its own returns how many frames it dropped; ``can_clear_queued`` says whether audio a clear dropped is surely
  not heard, so that a pause may take it back and play it again on resume (see ``Transport.can_clear_queued``).
- ``decode`` raises ``ProtocolError`` for anything the protocol does not allow; that call ends with
  ``protocol_error`` and the reason, nothing else does.
- ``transfer`` hands the caller to another destination where the protocol can (Twilio through its REST API);
  a transport that cannot keeps the default, which refuses, and the call goes on.
- ``send_dtmf`` presses keys towards the caller's side (RFC 4733 on SIP, in-band tones on Twilio and WebRTC); a
  transport that cannot keeps the default (``NotImplementedError``), and the call goes on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from fastapi import FastAPI
from voice_schemas import events


# ---------------------------------------------------------------- inbound events
@dataclass(frozen=True, slots=True)
class Started:
    """The connection is up and bound to a call created earlier (by a webhook, an INVITE, an offer)."""

    call_id: str
    stream_id: str | None = None


@dataclass(frozen=True, slots=True)
class CallerAudio:
    """Caller audio: zero or more PCM16 16 kHz frames of 20 ms."""

    frames: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class DtmfPressed:
    digit: str  # one of 0-9 * # A-D (the transport checks)


@dataclass(frozen=True, slots=True)
class MarkPlayed:
    """The audio sent before the mark ``name`` has played to the caller."""

    name: str


@dataclass(frozen=True, slots=True)
class CallerHungUp:
    """The caller's side ended the call (Twilio ``stop``, SIP BYE, peer connection closed cleanly)."""


Inbound = Started | CallerAudio | DtmfPressed | MarkPlayed | CallerHungUp

DTMF_DIGITS = frozenset("0123456789*#ABCD")


class ProtocolError(ValueError):
    """The far end broke its protocol: only that call ends, with ``protocol_error`` and this message."""


class TransferRefused(Exception):
    """A transfer the transport cannot carry out; the message is the reason (``call.transfer_failed``), never
    the destination. The call goes on."""


# ---------------------------------------------------------------- the transport
class Transport(ABC):
    """One caller connection. ``decode`` and ``encode_*`` translate; ``send`` and ``close`` do the I/O.

    The session calls ``play_frames``, ``mark``, ``clear`` and ``close``, one at a time, in playout order. A transport
    that queues and paces audio itself (RTP, a WebRTC track) overrides ``clear`` to drop its queue and say how many
    frames it dropped.
    """

    channel: ClassVar[events.Channel]
    media_format: ClassVar[str]  # reported in ``CallAnswered``
    stream_id: str | None = None
    # True where ``clear`` drops the audio sent but not yet played (the far end's buffer: Twilio's clear; or a
    # queue of our own: the WebRTC track's, the RTP sender's): a pause then clears the lead sent ahead and the
    # session plays it again on resume. False (the default) where a clear cannot stop audio already sent: a pause
    # only stops sending, since the caller would otherwise hear the lead twice.
    can_clear_queued: ClassVar[bool] = False
    # how many consecutive 20 ms frames the session may hand ``play_frames`` at once: more than one only where the
    # transport carries them in one message (Twilio) and can clear what the far end queued (the lead grows by the
    # extra frames, and only a clear keeps that from reaching a barge-in)
    frames_per_message: int = 1

    @abstractmethod
    def decode(self, message: Any) -> list[Inbound]:
        """One inbound protocol message -> the events it carries; ``ProtocolError`` when it is not allowed."""

    @abstractmethod
    def encode_audio(self, pcm: bytes, *, end_of_reply: bool = False) -> list[Any]:
        """One 20 ms agent frame -> protocol messages; ``end_of_reply`` flushes what the codec holds back."""

    @abstractmethod
    def encode_mark(self, name: str) -> list[Any]:
        """A mark after the audio encoded so far, to be reported back as ``MarkPlayed(name)``."""

    @abstractmethod
    def encode_clear(self) -> list[Any]:
        """Messages that drop the far end's queued audio; resets outbound codec state."""

    @abstractmethod
    async def send(self, message: Any) -> None:
        """Send one protocol message to the caller's side."""

    @abstractmethod
    async def close(self, reason: events.EndReason) -> None:
        """Close the connection (idempotent); ``reason`` picks the protocol's close code."""

    async def play(self, pcm: bytes, *, end_of_reply: bool = False) -> None:
        for m in self.encode_audio(pcm, end_of_reply=end_of_reply):
            await self.send(m)

    async def play_frames(self, pcms: Sequence[bytes], *, end_of_reply: bool = False) -> None:
        """Consecutive frames sent together (at most ``frames_per_message``, the playout loop's batch): one
        ``play`` each unless the transport carries them in one message."""
        for i, pcm in enumerate(pcms):
            await self.play(pcm, end_of_reply=end_of_reply and i == len(pcms) - 1)

    async def mark(self, name: str) -> None:
        for m in self.encode_mark(name):
            await self.send(m)

    async def clear(self) -> int | None:
        """Drop the agent audio queued toward the caller. A transport that queues it itself returns how many
        frames (``play`` calls) it dropped; None where the far end holds it (it does not say how much)."""
        for m in self.encode_clear():
            await self.send(m)
        return None

    async def transfer(self, target: str) -> None:
        """Hand the caller to ``target`` (an E.164 number or a SIP URI, already allowed). Returns once the
        provider has taken it over: the session then ends the call as ``transferred``, and the connection's own
        end that follows is part of it. ``TransferRefused`` with the reason otherwise (the default: this
        transport cannot transfer)."""
        raise TransferRefused("transport cannot transfer")

    async def send_dtmf(self, digits: str) -> None:
        """Press ``digits`` (1 to 32 of 0-9 * # A-D, already checked) towards the caller's side, after the audio
        sent so far: RFC 4733 events where they were negotiated (SIP), else in-band tones
        (``voice_ingress.tones``). Returns once they are sent, or queued in order behind that audio; the session
        holds the agent's next audio back for ``tones.duration_s(digits)``. ``NotImplementedError`` with the reason
        (the default) where this transport cannot: the session reports it in ``call.dtmf_sent`` (not ok)."""
        raise NotImplementedError("this kind of call cannot send DTMF")


# ---------------------------------------------------------------- where connections come from
class CallDesk(Protocol):
    """What an endpoint needs of the ingress service (``IngressService`` provides it)."""

    async def create_call(self, *, channel: events.Channel, to_number: str, from_number: str | None,
                          provider_call_id: str | None, tenant_id: str | None = None) -> str | None:
        """Route the called number to its agent and record the call; its call id, or None when no active
        agent answers the number (or, with ``tenant_id``, a SIP trunk's tenant, when another tenant owns it)."""

    async def end_by_provider_id(self, provider_call_id: str, reason: events.EndReason) -> None:
        """The provider says the call is over (it may be live on another replica)."""

    async def serve(self, transport: Transport, inbound: AsyncIterable[Any]) -> None:
        """Drive one connection until its call ends: decode ``inbound`` messages, open the session on
        ``Started``, hand it every other event, end it with the reason."""


class Endpoint:
    """Where callers of one protocol reach ingress: HTTP routes (webhooks, WebSockets), and listeners with a
    lifetime (a SIP UDP socket) started and stopped with the service."""

    def __init__(self, desk: CallDesk) -> None:
        self.desk = desk

    def routes(self, app: FastAPI) -> None:
        """Add this protocol's HTTP routes."""

    async def start(self) -> None:
        """Start listening (called once the bus is up)."""

    async def stop(self) -> None:
        """Stop accepting calls (live calls are ended by the service)."""
