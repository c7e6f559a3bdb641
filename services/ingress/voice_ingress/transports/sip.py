"""SIP: a PBX or carrier trunk calls an agent, and agents call out through a tenant's trunk. UAS and UAC over UDP
and TCP, media over RTP (G.711 μ-law or A-law).

``SipEndpoint`` listens on ``SIP_UDP_PORT`` / ``SIP_TCP_PORT`` and feeds every message to the user agent server
(``sip_dialogs.py``: transactions, dialogs, timers). It is the UAS's ``Application``: for a new INVITE it reads
the SDP offer (``sdp.py``; 400 unreadable, 488 no PCMU/PCMA; none at all: a delayed offer, ours goes in the 200 and
the answer comes in the ACK), finds the tenant's trunk it comes through (``sip_trunks.py``: by source address
and/or digest credentials, 401/403; else the platform-wide ``SIP_ALLOWED_SOURCES``), routes the called number
through the same directory as Twilio (``IngressService.create_call``, 404 when no agent answers it, or when the
number is not the trunk's tenant's), binds an RTP port, rings, answers with its SDP, and serves the call like any
transport. The called number is the trunk's number rules applied to the Request-URI's user; without a trunk the
Request-URI's user (the To user when it has none, ``SIP_DEFAULT_NUMBER`` when neither is a number), made E.164 by
``SIP_DEFAULT_COUNTRY_PREFIX``.

``SipEndpoint.dial`` is the SIP ``Dialer`` of outbound calls (``dialing.py``): a UAC INVITE to the trunk's
outbound proxy (``sip_uac.py``), and once answered the call is served like an inbound one. ``SipCall.transfer``
sends REFER and follows its NOTIFYs; ``SipCall.send_dtmf`` sends RFC 4733 events.

``SipCall`` is the call's transport: its RTP socket (``RtpMedia``), the caller's packets through a jitter buffer
and G.711 decoder into 20 ms PCM16 16 kHz frames, RFC 4733 telephone events into digits, and the agent's audio
encoded into 160-byte payloads that a 20 ms clock sends (G.711 silence when nothing is queued, so timestamps and
sequence numbers stay steady and NAT bindings stay open). A mark is reported when the tick after the audio queued
before it comes due: what the caller heard follows the server's own playout clock. ``clear`` empties the queue.
Media is symmetric: packets are sent to where the caller's packets come from (latched on the first one; packets
from any other source are dropped). The caller hangs up with BYE; the call ending on our side sends BYE.

NAT: ``SIP_ADVERTISED_ADDRESS`` is written into Contact, Via and SDP instead of the bind address, and RTP ports come
from ``SIP_RTP_PORT_MIN``..``SIP_RTP_PORT_MAX`` so they can be forwarded.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import ipaddress
import os
import random
import re
import socket
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator
from sipmessage import Request, Response
from voice_runtime import metrics
from voice_runtime.egress import BlockedAddress, checked_address
from voice_runtime.logging import get_logger, safe_error
from voice_runtime.secretbox import parse_key
from voice_runtime.settings import EgressSettings, SecretsSettings
from voice_schemas import events
from voice_schemas.agent import SipTrunk

from .. import g711, rtp, sdp, sip_uac, tones
from ..codec import PHONE_FRAME_BYTES, AgentAudioEncoder, CallerAudioDecoder
from ..dialing import DialOutcome, OnStatus
from ..sip_dialogs import MAX_MESSAGE_BYTES, Dialog, Peer, UasSettings, UserAgentServer, local_party
from ..sip_digest import Credentials, DigestError, DigestServer, parse_authorization
from ..sip_trunks import TrunkDirectory, tenant_secret, trunk_number
from .base import (
    CallDesk,
    CallerAudio,
    CallerHungUp,
    DtmfPressed,
    Endpoint,
    Inbound,
    MarkPlayed,
    ProtocolError,
    Started,
    TransferRefused,
    Transport,
)

log = get_logger(__name__)
SVC = "ingress"
CHANNEL = events.Channel.sip
FRAME_S = 0.020
MAX_CLOCK_LAG_S = 0.2  # the loop stalled this long: the clock restarts instead of bursting packets
INBOX_LIMIT = 256
INBOX_AUDIO_LIMIT = INBOX_LIMIT - 32  # the rest is kept for marks, digits, the start and the end
MAX_RTP_BYTES = 1500
MAX_TCP_CONNECTIONS = 256
AUTH_FAILURES_PER_MIN = 10  # wrong digest credentials a source may present per minute
TCP_IDLE_S = 3600.0  # a connection carrying a call may be quiet for the whole call
CLOSE_GRACE_S = 0.5  # BYEs sent on shutdown get this long to leave before the sockets close
_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
_SIP_URI = re.compile(r"^sips?:[^\s<>\"?]{1,256}$")  # no ?headers: the transferee would copy them
_FRAMES_DROPPED_IN = metrics.AUDIO_FRAMES.labels(SVC, "in", "dropped")


class SipSettings(SecretsSettings, EgressSettings):
    """SIP settings of ingress: listeners, the address to advertise behind NAT, RTP ports, numbers, limits, and
    what trunks need (``SECRETS_KEY`` opens their passwords)."""

    sip_enabled: bool = Field(False, description="Accept SIP calls (UDP and TCP listeners)")
    sip_bind_host: str = Field("0.0.0.0", description="Address the SIP and RTP sockets bind to")
    sip_udp_port: int = Field(5060, ge=0, le=65535, description="SIP over UDP (0: any free port)")
    sip_tcp_enabled: bool = Field(True, description="Also listen for SIP over TCP")
    sip_tcp_port: int = Field(5060, ge=0, le=65535, description="SIP over TCP (0: the UDP port, or any free one)")
    sip_advertised_address: str = Field(
        "", description="IP address written into Contact, Via and SDP instead of the bind address (NAT: the "
        "node's or load balancer's public address). Empty: the bind address, or this host's primary address")
    sip_rtp_port_min: int | None = Field(None, ge=1024, le=65535,
                                         description="First RTP port (with SIP_RTP_PORT_MAX). Unset: ephemeral")
    sip_rtp_port_max: int | None = Field(None, ge=1024, le=65535, description="Last RTP port: one per SIP call")
    sip_default_number: str = Field(
        "", description="E.164 number a call is routed by when neither the Request-URI nor To names a number")
    sip_default_country_prefix: str = Field(
        "", description="Turns a national number into E.164: '+1' makes 5550100 +15550100 (a leading 0 trunk "
        "prefix is dropped; 00 means international). Empty: only numbers in E.164 route")
    sip_t1_ms: int = Field(500, ge=10, le=5000, description="RFC 3261 T1 (round-trip estimate)")
    sip_t2_ms: int = Field(4000, ge=10, le=30000, description="RFC 3261 T2 (longest retransmission interval)")
    sip_ring_ms: int = Field(0, ge=0, le=60_000, description="Ringing (180) before the call is answered")
    sip_max_calls: int = Field(100, ge=1, le=10_000, description="SIP calls one replica takes; more get 486")
    sip_allowed_sources: str = Field(
        "", description="Comma-separated addresses or CIDR networks whose calls are taken (routed by number to any "
        "tenant, without a trunk); others get 403 and no dialog unless a tenant's trunk names them or asks for "
        "digest credentials. Empty: any source (put the trunk's addresses here on a public address)")
    sip_trunks_only: bool = Field(
        False, description="Take calls only through tenants' trunks (SIP_ALLOWED_SOURCES then admits no one)")
    sip_realm: str = Field("voice-platform", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9.@_-]+$",
                           description="Digest realm of the challenges sent to trunks")
    sip_digest_key: SecretStr | None = Field(
        None, description="Key of the digest nonces (32+ random bytes, base64), the same on every replica. Unset: "
        "derived from SECRETS_KEY, else random per replica (a caller answering a challenge on another replica "
        "is challenged again)")
    sip_nonce_ttl_s: int = Field(300, ge=10, le=3600, description="A digest nonce's lifetime (then stale=true)")
    sip_dial_timeout_s: int = Field(60, ge=5, le=600,
                                    description="An outbound call not answered within this is CANCELled")
    sip_rate_per_s: float = Field(20.0, gt=0, description="Out-of-dialog SIP requests per second per source")
    sip_jitter_ms: int = Field(60, ge=0, le=500, description="Longest wait for a reordered RTP packet")
    sip_user_agent: str = Field("voice-platform", description="Server header of our responses")

    @field_validator("sip_advertised_address")
    @classmethod
    def _address(cls, value: str) -> str:
        if value:
            ipaddress.ip_address(value)
        return value

    @field_validator("sip_default_number")
    @classmethod
    def _default_number(cls, value: str) -> str:
        if value and not _E164.match(value):
            raise ValueError("SIP_DEFAULT_NUMBER must be an E.164 number (+ and digits)")
        return value

    @field_validator("sip_default_country_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if value and not re.fullmatch(r"\+[1-9]\d{0,3}", value):
            raise ValueError("SIP_DEFAULT_COUNTRY_PREFIX must be + and a country code, e.g. +1")
        return value

    @field_validator("sip_allowed_sources")
    @classmethod
    def _sources(cls, value: str) -> str:
        for s in _split(value):
            ipaddress.ip_network(s, strict=False)
        return value

    @model_validator(mode="after")
    def _ports(self) -> SipSettings:
        lo, hi = self.sip_rtp_port_min, self.sip_rtp_port_max
        if (lo is None) != (hi is None):
            raise ValueError("set both SIP_RTP_PORT_MIN and SIP_RTP_PORT_MAX, or neither")
        if lo is not None and hi is not None and lo > hi:
            raise ValueError("SIP_RTP_PORT_MIN is above SIP_RTP_PORT_MAX")
        if self.sip_t2_ms < self.sip_t1_ms:
            raise ValueError("SIP_T2_MS is below SIP_T1_MS")
        return self

    @field_validator("sip_digest_key")
    @classmethod
    def _digest_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                raw = base64.b64decode(value.get_secret_value().strip(), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("SIP_DIGEST_KEY must be base64") from None
            if len(raw) < 16:
                raise ValueError("SIP_DIGEST_KEY must hold at least 16 bytes")
        return value

    def allowed_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(s, strict=False) for s in _split(self.sip_allowed_sources)]

    def nonce_key(self) -> bytes | None:
        """The digest nonces' key: SIP_DIGEST_KEY, else one derived from SECRETS_KEY, else None."""
        if self.sip_digest_key is not None:
            return base64.b64decode(self.sip_digest_key.get_secret_value().strip())
        if self.secrets_key is not None:
            return hmac.new(parse_key(self.secrets_key.get_secret_value()), b"sip-digest-nonce",
                            hashlib.sha256).digest()
        return None


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


# ---------------------------------------------------------------- numbers
def normalise_number(user: str | None, country_prefix: str) -> str | None:
    """A Request-URI/To user -> an E.164 number, or None when it is not a phone number."""
    if not user:
        return None
    digits = re.sub(r"[\s\-.()]", "", user.split(";", 1)[0])
    if digits.startswith("+"):
        pass
    elif digits.startswith("00") and digits[2:].isdigit():
        digits = "+" + digits[2:]
    elif digits.isdigit() and country_prefix:
        digits = country_prefix + (digits[1:] if digits.startswith("0") else digits)
    return digits if _E164.match(digits) else None


def called_number(req: Request, settings: SipSettings) -> str | None:
    prefix = settings.sip_default_country_prefix
    for user in (req.uri.user, req.to_address.uri.user):
        number = normalise_number(user, prefix)
        if number is not None:
            return number
    return settings.sip_default_number or None


def provider_id(sip_call_id: str) -> str:
    """A subject-safe provider call id for a SIP Call-ID: readable, and unique through a short hash of it."""
    readable = re.sub(r"[^A-Za-z0-9_-]", "_", sip_call_id)[:40]
    return f"{readable}-{hashlib.sha256(sip_call_id.encode()).hexdigest()[:16]}"


def advertised_address(settings: SipSettings) -> str:
    if settings.sip_advertised_address:
        return settings.sip_advertised_address
    host = settings.sip_bind_host
    if host not in ("0.0.0.0", "::", ""):
        return host
    try:  # the address of the interface a packet to a public address would leave by (nothing is sent)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1"


# ---------------------------------------------------------------- RTP media of one call
class NoFreePort(RuntimeError):
    """Every RTP port of the configured range is in use."""


class _RtpProtocol(asyncio.DatagramProtocol):
    def __init__(self, on_packet: Callable[[bytes, tuple[str, int]], None]) -> None:
        self.on_packet = on_packet

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.on_packet(data, (addr[0], addr[1]))


async def bind_rtp(host: str, ports: tuple[int, int] | None,
                   on_packet: Callable[[bytes, tuple[str, int]], None]) -> asyncio.DatagramTransport:
    """A UDP socket for RTP: an even port of the range (RTCP's odd neighbour stays free), else an ephemeral one."""
    loop = asyncio.get_running_loop()
    if ports is None:
        transport, _ = await loop.create_datagram_endpoint(lambda: _RtpProtocol(on_packet), local_addr=(host, 0))
        return transport
    lo, hi = ports
    evens = list(range(lo + lo % 2, hi + 1, 2)) or [lo]
    start = random.randrange(len(evens))
    for port in evens[start:] + evens[:start]:
        try:
            transport, _ = await loop.create_datagram_endpoint(lambda: _RtpProtocol(on_packet),
                                                               local_addr=(host, port))
        except OSError:
            continue
        return transport
    raise NoFreePort(f"no free RTP port in {lo}-{hi}")


class SipCall(Transport):
    """One SIP call's media and events. Inbound messages are the transport's own events (``messages()``)."""

    channel = CHANNEL
    media_format = "audio/PCMU;rate=8000"
    can_clear_queued = True  # the RTP queue is the only one: what is still in it is never sent

    def __init__(self, dialog: Dialog, negotiated: sdp.Negotiated, *, jitter_s: float,
                 on_close: Callable[[SipCall, events.EndReason], None]) -> None:
        self.dialog = dialog
        self.negotiated = negotiated
        self.call_id: str | None = None
        self.stream_id = None
        self.trunk: SipTrunk | None = None  # the tenant's trunk the call came or went through
        self.signalling: UserAgentServer | None = None  # sends our REFER in the dialog
        self.transfer_timeout_s = 60.0
        self._refer: asyncio.Future[int] | None = None  # the final status the NOTIFYs of our REFER report
        self._event_ts = 0
        self._on_close = on_close
        self.rtp: asyncio.DatagramTransport | None = None
        self.port = 0
        self.remote: tuple[str, int] = (negotiated.remote_host, negotiated.remote_port)
        self.latched: tuple[str, int] | None = None
        self.ssrc: int | None = None
        self.jitter = rtp.JitterBuffer(max_wait_s=jitter_s)
        self.dtmf = rtp.DtmfReceiver()
        self.queue = rtp.PlayoutQueue()
        self.sender = rtp.RtpSender(negotiated.payload_type)
        self._set_codec(negotiated)
        self.started = False
        self.closed = False
        self.hung_up_by_caller = False
        self.packets_in = self.packets_out = self.foreign_packets = 0
        self._inbox: asyncio.Queue[Any] = asyncio.Queue(INBOX_LIMIT)
        self._ended = False
        self._clock: asyncio.Task[None] | None = None

    def _set_codec(self, n: sdp.Negotiated) -> None:
        law: g711.Law = n.law
        self.law = law
        self.decoder = CallerAudioDecoder(law)
        self.encoder = AgentAudioEncoder(law)
        self.silence = bytes([g711.SILENCE[law]]) * PHONE_FRAME_BYTES
        self.sender.payload_type = n.payload_type
        if type(self) in (SipCall, SipCallPcma):  # the law settled late (an answer to our offer): say it right
            self.__class__ = SipCallPcma if n.encoding == "PCMA" else SipCall

    async def bind(self, host: str, ports: tuple[int, int] | None) -> int:
        self.attach(await bind_rtp(host, ports, self._on_packet))
        return self.port

    def attach(self, transport: asyncio.DatagramTransport) -> None:
        """Take an RTP socket bound before the call existed (its port went into our offer)."""
        self.rtp = transport
        self.port = int(transport.get_extra_info("sockname")[1])

    def start(self, call_id: str, stream_id: str) -> None:
        """Answered: media flows both ways and the call binds."""
        self.call_id, self.stream_id = call_id, stream_id
        self.started = True
        self._clock = asyncio.create_task(self._run_clock(), name=f"rtp:{call_id}")
        self._push(Started(call_id=call_id, stream_id=stream_id))

    def update(self, n: sdp.Negotiated) -> None:
        """A re-offer was answered (hold, resume, a new address or codec)."""
        if (n.remote_host, n.remote_port) != self.remote:
            self.remote = (n.remote_host, n.remote_port)
            self.latched = None  # a new address: latch again to where its packets come from
        if n.payload_type != self.negotiated.payload_type or n.encoding != self.negotiated.encoding:
            self._set_codec(n)
        self.negotiated = n

    # ------------------------------------------------------------ caller -> us
    def _on_packet(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.closed or len(data) > MAX_RTP_BYTES:
            return
        try:
            packet = rtp.parse(data)
        except rtp.RtpError:
            return  # RTCP and garbage
        n = self.negotiated
        if packet.payload_type not in (n.payload_type, n.dtmf_payload_type):
            return
        if self.latched is None:
            self.latched = addr
        elif addr != self.latched:
            self.foreign_packets += 1  # not the caller's source: never played, never latched to
            return
        self.packets_in += 1
        if packet.ssrc != self.ssrc:
            if self.ssrc is not None:
                self.jitter.reset()
            self.ssrc = packet.ssrc
        if not (self.started and n.we_receive):
            return
        if packet.payload_type == n.dtmf_payload_type:
            for digit in self.dtmf.push(packet.timestamp, packet.payload):
                self._push(DtmfPressed(digit))
            return
        self.jitter.push(packet.seq, packet.payload, asyncio.get_running_loop().time())
        self._drain()

    def _drain(self) -> None:
        frames: list[bytes] = []
        for payload in self.jitter.pop(asyncio.get_running_loop().time()):
            frames += self.decoder.decode(payload if payload is not None else self.silence)
        if frames:
            self._push(CallerAudio(tuple(frames)))

    # ------------------------------------------------------------ us -> caller: the 20 ms clock
    async def _run_clock(self) -> None:
        loop = asyncio.get_running_loop()
        start, n = loop.time(), 0
        while not self.closed:
            n += 1
            delay = start + n * FRAME_S - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif -delay > MAX_CLOCK_LAG_S:
                start, n = loop.time(), 0
            self._tick()

    def _tick(self) -> None:
        payload, marks = self.queue.take()
        for name in marks:
            self._push(MarkPlayed(name))
        if self.negotiated.we_send and self.rtp is not None:
            target = self.latched or self.remote
            try:
                if isinstance(payload, rtp.DtmfTick):
                    self._send_key(payload, target)
                else:
                    self.rtp.sendto(self.sender.packet(payload or self.silence), target)
                    self.packets_out += 1
            except (OSError, RuntimeError, ValueError):
                pass  # the far end's address is unusable for now; the call goes on
        self.sender.tick()
        if len(self.jitter):
            self._drain()  # packets held behind a gap leave once their wait is over

    def _send_key(self, tick: rtp.DtmfTick, target: tuple[str, int]) -> None:
        """One 20 ms tick of an RFC 4733 event: every packet of the event carries its first tick's timestamp;
        the last tick's End packet goes three times. Sequence numbers and the media clock go on as for audio."""
        pt = self.negotiated.dtmf_payload_type
        if self.rtp is None:
            return
        if pt is None:  # a re-offer dropped telephone-event while keys were queued: silence in their place
            self.rtp.sendto(self.sender.packet(self.silence), target)
            self.packets_out += 1
            return
        if tick.index == 0:
            self._event_ts = self.sender.timestamp
        data = tick.payload()
        for _ in range(rtp.END_REPEATS if tick.end else 1):
            self.rtp.sendto(self.sender.packet(data, payload_type=pt, timestamp=self._event_ts,
                                               marker=tick.index == 0), target)
            self.packets_out += 1

    async def send_dtmf(self, digits: str) -> None:
        """Keys towards the far end, queued behind the audio sent so far: RFC 4733 events on the negotiated
        telephone-event payload type (``tones.TONE_MS`` each, ``tones.GAP_MS`` apart), or in-band tones when the
        far end offered no telephone-event."""
        if self.closed:
            raise ConnectionError("the SIP call is over")
        tones.check_digits(digits)
        if self.negotiated.dtmf_payload_type is None:
            for payload in self.encoder.flush() + tones.g711_frames(digits, self.law):
                self.queue.put_key(payload)
            return
        for payload in self.encoder.flush():
            self.queue.put(payload)
        for tick in rtp.dtmf_ticks(digits, tone_ms=tones.TONE_MS, gap_ms=tones.GAP_MS):
            self.queue.put_key(tick if tick is not None else self.silence)

    # ------------------------------------------------------------ transfer (REFER, RFC 3515)
    def refer_target(self, target: str) -> str:
        """``target`` as a Refer-To URI: a SIP URI as given, an E.164 number at the trunk's proxy (or the far
        end of the dialog when the call came without a trunk)."""
        if _SIP_URI.match(target):
            return target
        if not _E164.match(target):
            raise TransferRefused("the transfer target is neither an E.164 number nor a SIP URI")
        host = ""
        if self.trunk is not None and self.trunk.outbound_proxy:
            host = self.trunk.outbound_proxy
        else:
            with contextlib.suppress(ValueError):
                host = str(sip_uac_host(self.dialog.remote_target))
        if not host:
            raise TransferRefused("no host to send a number to (the call has no trunk with an outbound proxy)")
        return f"sip:{target}@{host};user=phone"

    async def transfer(self, target: str) -> None:
        """REFER the far end to ``target``; returns once a NOTIFY reports the new call answered (2xx in its
        ``message/sipfrag``), or the far end hung up after accepting (the session then ends the call as
        transferred, with our BYE); ``TransferRefused`` when the trunk does not take REFER, the far end
        refuses it, or the target fails."""
        if self.trunk is not None and not self.trunk.supports_refer:
            raise TransferRefused("the SIP trunk does not support transfers (REFER)")
        if self.closed or self.signalling is None or self.dialog.state == "terminated":
            raise TransferRefused("the call is over")
        if self._refer is not None and not self._refer.done():
            raise TransferRefused("a transfer of this call is already in progress")
        refer_to = self.refer_target(target)
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future[Response | None] = loop.create_future()
        self._refer = loop.create_future()

        def on_final(resp: Response | None) -> None:
            if not accepted.done():
                accepted.set_result(resp)

        self.signalling.in_dialog_request(
            self.dialog, "REFER", headers=[("Refer-To", f"<{refer_to}>"),
                                           ("Referred-By", f"<{_party_uri(self.dialog)}>")], on_final=on_final)
        resp = await accepted
        if resp is None:
            raise TransferRefused("the far end did not answer the REFER")
        if resp.code >= 300:
            raise TransferRefused(f"the far end refused the transfer ({resp.code})")
        try:
            code = await asyncio.wait_for(asyncio.shield(self._refer), self.transfer_timeout_s)
        except TimeoutError:
            raise TransferRefused("the transfer did not complete in time") from None
        if code == 0 or 200 <= code < 300:
            log.info("sip_transferred", call_id=self.call_id)
            return
        raise TransferRefused(f"the transfer target answered {code}")

    def refer_progress(self, request: Request) -> None:
        """A NOTIFY of our REFER's implicit subscription: its sipfrag's status line; a final one settles it."""
        if self._refer is None or self._refer.done():
            return
        event = (request.headers.get("Event") or "").split(";")[0].strip().lower()
        if event != "refer":
            return
        line = request.body.decode("utf-8", "replace").strip().split("\r\n", 1)[0].split("\n", 1)[0]
        parts = line.split()
        code = int(parts[1]) if len(parts) >= 2 and parts[0] == "SIP/2.0" and parts[1].isdigit() else None
        state = (request.headers.get("Subscription-State") or "").split(";")[0].strip().lower()
        if code is not None and code >= 200:
            self._refer.set_result(code)
        elif state == "terminated":
            self._refer.set_result(500 if code is None else code)

    # ------------------------------------------------------------ events
    def _push(self, event: Inbound) -> None:
        if self._ended:
            return
        limit = INBOX_AUDIO_LIMIT if isinstance(event, CallerAudio) else INBOX_LIMIT - 1
        if self._inbox.qsize() >= limit:
            if isinstance(event, CallerAudio):
                _FRAMES_DROPPED_IN.inc(len(event.frames))
            else:
                log.warning("sip_event_dropped", call_id=self.call_id, kind=type(event).__name__)
            return
        self._inbox.put_nowait(event)

    def hung_up(self) -> None:
        """BYE from the caller."""
        self.hung_up_by_caller = True
        if self._refer is not None and not self._refer.done():
            self._refer.set_result(0)  # the far end left after accepting our REFER: it carried it out
        if self.started:
            self._push(CallerHungUp())
        self.end_inbound()

    def end_inbound(self) -> None:
        if not self._ended:
            self._ended = True
            self._inbox.put_nowait(_END)

    async def messages(self) -> AsyncIterator[Any]:
        while True:
            item = await self._inbox.get()
            if item is _END:
                return
            yield item

    # ------------------------------------------------------------ Transport
    def decode(self, message: Any) -> list[Inbound]:
        if not isinstance(message, Started | CallerAudio | MarkPlayed | CallerHungUp | DtmfPressed):
            raise ProtocolError(f"unexpected {type(message).__name__}")
        return [message]

    def encode_audio(self, pcm: bytes, *, end_of_reply: bool = False) -> list[Any]:
        payloads = self.encoder.encode(pcm)
        if end_of_reply:
            payloads += self.encoder.flush()
        return payloads

    def encode_mark(self, name: str) -> list[Any]:
        return [rtp._Mark(name)]

    def encode_clear(self) -> list[Any]:
        return []

    async def send(self, message: Any) -> None:
        if self.closed:
            raise ConnectionError("the SIP call is over")
        if isinstance(message, rtp._Mark):
            self.queue.put_mark(message.name)
        else:
            self.queue.put(message)

    async def clear(self) -> int:
        dropped = self.queue.queued  # one payload per agent frame (keys being pressed are not dropped)
        self.queue.clear()
        self.encoder.reset()
        return dropped

    async def close(self, reason: events.EndReason) -> None:
        if self.closed:
            return
        self.closed = True
        self.end_inbound()
        if self._clock is not None and self._clock is not asyncio.current_task():
            self._clock.cancel()
        if self.rtp is not None:
            self.rtp.close()
        self._on_close(self, reason)


class SipCallPcma(SipCall):
    """A call answered with A-law (reported so in ``CallAnswered``)."""

    media_format = "audio/PCMA;rate=8000"


def new_call(dialog: Dialog, negotiated: sdp.Negotiated, *, jitter_s: float,
             on_close: Callable[[SipCall, events.EndReason], None]) -> SipCall:
    cls = SipCallPcma if negotiated.encoding == "PCMA" else SipCall
    return cls(dialog, negotiated, jitter_s=jitter_s, on_close=on_close)


def sip_uac_host(uri: str) -> str:
    """The host[:port] of a SIP URI (``sip:user@host:port;params``)."""
    rest = uri.split(":", 1)[1] if ":" in uri else uri
    rest = rest.split(";", 1)[0].split("?", 1)[0]
    host = rest.rsplit("@", 1)[-1]
    if not host:
        raise ValueError("no host in the URI")
    return host


def _party_uri(d: Dialog) -> str:
    """Our own URI in the dialog (for Referred-By)."""
    header = local_party(d)
    start, end = header.find("<"), header.find(">")
    return header[start + 1:end] if 0 <= start < end else header.split(";", 1)[0].strip()


_END = object()


# ---------------------------------------------------------------- the endpoint
class _SipUdp(asyncio.DatagramProtocol):
    def __init__(self, endpoint: SipEndpoint) -> None:
        self.endpoint = endpoint

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.endpoint.received(data, Peer("UDP", addr[0], addr[1]))


class _LoopScheduler:
    def time(self) -> float:
        return asyncio.get_running_loop().time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(delay, callback)


class SipEndpoint(Endpoint):
    """The SIP listeners, the user agent server, and the task serving each answered call."""

    def __init__(self, desk: CallDesk, settings: SipSettings) -> None:
        super().__init__(desk)
        self.settings = settings
        self.address = advertised_address(settings)
        self.udp: asyncio.DatagramTransport | None = None
        self.tcp: asyncio.Server | None = None
        self.udp_port = 0
        self.tcp_port = 0
        self._tcp_writers: dict[tuple[str, int], asyncio.StreamWriter] = {}
        self._tcp_tasks: set[asyncio.Task[None]] = set()
        self._calls: set[asyncio.Task[None]] = set()  # each INVITE being answered, then its call being served
        self._rings: dict[tuple[str, str], asyncio.Event] = {}  # dialogs ringing -> set when CANCELled
        ports = None
        if settings.sip_rtp_port_min is not None and settings.sip_rtp_port_max is not None:
            ports = (settings.sip_rtp_port_min, settings.sip_rtp_port_max)
        self.rtp_ports = ports
        self.trunks = TrunkDirectory(settings.allowed_networks(), trunks_only=settings.sip_trunks_only)
        self.uas = UserAgentServer(self, self, _LoopScheduler(), UasSettings(
            t1_s=settings.sip_t1_ms / 1000, t2_s=settings.sip_t2_ms / 1000, local_host=self.address,
            allowed=settings.allowed_networks(), admit=self.trunks.admits, rate_per_s=settings.sip_rate_per_s,
            rate_burst=2 * settings.sip_rate_per_s, user_agent=settings.sip_user_agent))
        key = settings.nonce_key()
        self._shared_nonces = key is not None
        self.digest = DigestServer(key or os.urandom(32), settings.sip_realm, ttl_s=settings.sip_nonce_ttl_s)
        self.box = settings.secret_box()
        self.secrets: Any = None  # KV ``secrets`` (trunk passwords), once started
        self._acks: dict[tuple[str, str], asyncio.Future[bytes]] = {}  # delayed offers awaiting the ACK's answer
        self._auth_failures: OrderedDict[str, tuple[float, int]] = OrderedDict()  # source -> (window start, count)
        self._stopping = asyncio.Event()
        self._trunk_watch: asyncio.Task[None] | None = None
        self.egress = settings.egress_policy()
        self.on_status: OnStatus | None = None  # the dial handler's progress callback (ringing)

    @property
    def live_calls(self) -> int:
        return len(self._calls)

    # ------------------------------------------------------------ lifetime
    async def start(self) -> None:
        if not self.settings.sip_enabled:
            return
        kv: dict[str, Any] = getattr(self.desk, "kv", {}) or {}
        self.secrets = kv.get("secrets")
        if kv.get("trunks") is not None:
            self._stopping.clear()
            self._trunk_watch = asyncio.create_task(self.trunks.run(kv["trunks"], self._stopping),
                                                    name="sip-trunks")
        if not self._shared_nonces:
            log.info("sip_digest_nonces_local", detail="neither SIP_DIGEST_KEY nor SECRETS_KEY is set: digest "
                     "nonces are this replica's own")
        loop = asyncio.get_running_loop()
        host = self.settings.sip_bind_host
        self.udp, _ = await loop.create_datagram_endpoint(lambda: _SipUdp(self),
                                                          local_addr=(host, self.settings.sip_udp_port))
        self.udp_port = int(self.udp.get_extra_info("sockname")[1])
        self.uas.settings.local_port = self.udp_port
        if self.settings.sip_tcp_enabled:
            tcp_port = self.settings.sip_tcp_port
            try:
                self.tcp = await asyncio.start_server(self._tcp_connection, host, tcp_port or self.udp_port,
                                                      limit=MAX_MESSAGE_BYTES)
            except OSError:
                if tcp_port:
                    raise
                # 0: the UDP port's number when TCP has it free, else any free port
                self.tcp = await asyncio.start_server(self._tcp_connection, host, 0, limit=MAX_MESSAGE_BYTES)
            self.tcp_port = int(self.tcp.sockets[0].getsockname()[1])
        log.info("sip_listening", udp_port=self.udp_port, tcp_port=self.tcp_port or None,
                 advertised=self.address, sources_restricted=bool(self.settings.sip_allowed_sources))
        if not self.settings.sip_allowed_sources:
            log.warning("sip_open_to_any_source",
                        detail="SIP_ALLOWED_SOURCES is empty: any source may call (rate-limited per address)")

    async def stop(self) -> None:
        if not self.settings.sip_enabled:
            return
        self._stopping.set()
        if self._trunk_watch is not None:
            self._trunk_watch.cancel()
            with contextlib.suppress(BaseException):
                await self._trunk_watch
        tasks = list(self._calls)
        for t in tasks:
            t.cancel()  # a call being served ends with `shutdown` (BYE to the caller)
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        if tasks:
            await asyncio.sleep(CLOSE_GRACE_S if self.udp is not None else 0)
        if self.tcp is not None:
            self.tcp.close()
        for t in list(self._tcp_tasks):
            t.cancel()
        for w in list(self._tcp_writers.values()):
            w.close()
        if self.udp is not None:
            self.udp.close()

    # ------------------------------------------------------------ the wire
    def received(self, data: bytes, peer: Peer) -> None:
        try:
            self.uas.receive(data, peer)
        except Exception as e:  # one message never stops the listener
            metrics.ERRORS.labels(SVC, "sip_message").inc()
            log.warning("sip_message_failed", error=safe_error(e, 200))

    def send(self, data: bytes, peer: Peer) -> None:
        if peer.transport == "UDP":
            if self.udp is not None and not self.udp.is_closing():
                self.udp.sendto(data, (peer.host, peer.port))
            return
        writer = self._tcp_writers.get((peer.host, peer.port))
        if writer is not None and not writer.is_closing():
            writer.write(data)

    async def _tcp_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        addr = writer.get_extra_info("peername")
        if len(self._tcp_writers) >= MAX_TCP_CONNECTIONS or not addr:
            writer.close()
            return
        await self._tcp_serve(reader, writer, Peer("TCP", addr[0], addr[1]))

    async def _tcp_connect(self, host: str, port: int) -> Peer:
        """A TCP connection of ours to a trunk (kept and read like an accepted one), or the one already open."""
        peer = Peer("TCP", host, port)
        writer = self._tcp_writers.get((host, port))
        if writer is not None and not writer.is_closing():
            return peer
        if len(self._tcp_writers) >= MAX_TCP_CONNECTIONS:
            raise ConnectionError("too many SIP TCP connections")
        reader, out = await asyncio.wait_for(asyncio.open_connection(host, port, limit=MAX_MESSAGE_BYTES), 5)
        self._tcp_writers[(host, port)] = out
        task = asyncio.create_task(self._tcp_serve(reader, out, peer), name="sip-tcp-out")
        self._tcp_tasks.add(task)
        task.add_done_callback(self._tcp_tasks.discard)
        return peer

    async def _tcp_serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer) -> None:
        self._tcp_writers[(peer.host, peer.port)] = writer
        task = asyncio.current_task()
        if task is not None:
            self._tcp_tasks.add(task)
        try:
            while True:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TCP_IDLE_S)
                head = head.lstrip(b"\r\n")
                if not head.strip():
                    continue  # keep-alive
                length = _content_length(head)
                if length is None or length > MAX_MESSAGE_BYTES:
                    metrics.ERRORS.labels(SVC, "sip_malformed").inc()
                    break  # framing is lost: the stream cannot be read further
                body = await reader.readexactly(length) if length else b""
                self.received(head + body, peer)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError, ValueError):
            pass
        finally:
            self._tcp_writers.pop((peer.host, peer.port), None)
            if task is not None:
                self._tcp_tasks.discard(task)
            writer.close()

    # ------------------------------------------------------------ the UAS's Application
    def invite(self, dialog: Dialog, request: Request) -> None:
        if len(self._calls) >= self.settings.sip_max_calls:
            metrics.ERRORS.labels(SVC, "sip_busy").inc()
            self.uas.reject(dialog, 486)
            return
        task = asyncio.create_task(self._answer(dialog, request), name="sip-invite")
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    def cancelled(self, dialog: Dialog) -> None:
        ring = self._rings.get(dialog.key)
        if ring is not None:
            ring.set()
        if isinstance(dialog.app, SipCall):
            dialog.app.hung_up()

    def reoffer(self, dialog: Dialog, body: bytes) -> str:
        call = dialog.app
        if not isinstance(call, SipCall) or call.port == 0:
            raise sdp.SdpError("the call has no media yet")
        offer = sdp.parse(body)
        n = sdp.negotiate(offer, address=self.address, port=call.port, session_id=_session_id(dialog),
                          session_version=_next_version(call))
        call.update(n)
        log.info("sip_reoffer_answered", call_id=call.call_id, direction=n.direction)
        return n.sdp

    def current_answer(self, dialog: Dialog) -> str:
        call = dialog.app
        if not isinstance(call, SipCall):
            raise sdp.SdpError("the call has no media yet")
        return call.negotiated.sdp

    def bye(self, dialog: Dialog) -> None:
        self._release_ack(dialog)
        if isinstance(dialog.app, SipCall):
            dialog.app.hung_up()

    def _release_ack(self, dialog: Dialog) -> None:
        """A delayed offer's ACK will not come (BYE, or 64·T1 passed): stop waiting for its answer."""
        waiting = self._acks.get(dialog.key)
        if waiting is not None and not waiting.done():
            waiting.set_result(b"")

    def ack_lost(self, dialog: Dialog) -> None:
        self._release_ack(dialog)
        if isinstance(dialog.app, SipCall):
            dialog.app.end_inbound()  # the connection is lost: the call ends

    def dtmf(self, dialog: Dialog, digit: str) -> None:
        if isinstance(dialog.app, SipCall) and dialog.app.started:
            dialog.app._push(DtmfPressed(digit))

    def notify(self, dialog: Dialog, request: Request) -> None:
        if isinstance(dialog.app, SipCall):
            dialog.app.refer_progress(request)

    def acked(self, dialog: Dialog, body: bytes) -> None:
        waiting = self._acks.get(dialog.key)
        if waiting is not None and not waiting.done():
            waiting.set_result(body)
            return
        call = dialog.app
        if isinstance(call, SipCall):  # the answer to the offer we made in a 2xx to a re-INVITE without one
            with contextlib.suppress(ValueError):
                call.update(sdp.accept_answer(sdp.parse(body), call.negotiated.sdp))

    # ------------------------------------------------------------ answering an INVITE
    def _guessing(self, host: str, failed: bool = False) -> bool:
        """A source past ``AUTH_FAILURES_PER_MIN`` wrong credentials in its minute (counting this one when
        ``failed``): its credentials are not even checked until the minute is over (password guessing)."""
        now = asyncio.get_running_loop().time()
        start, count = self._auth_failures.get(host, (now, 0))
        if now - start > 60:
            start, count = now, 0
        if failed:
            count += 1
            self._auth_failures[host] = (start, count)
            self._auth_failures.move_to_end(host)
            while len(self._auth_failures) > 4096:
                self._auth_failures.popitem(last=False)
        return count >= AUTH_FAILURES_PER_MIN

    async def _authorize(self, d: Dialog, req: Request) -> tuple[bool, SipTrunk | None]:
        """Which trunk the INVITE comes through (None: the platform-wide allow-list took it), or False once it
        has been refused (401 with a challenge, or 403)."""
        header = req.headers.get("Authorization") or req.headers.get("Proxy-Authorization")
        presented = None
        if header and self._guessing(d.peer.host):
            metrics.ERRORS.labels(SVC, "sip_auth_failed").inc()
            self.uas.reject(d, 403)
            return False, None
        if header:
            try:
                presented = parse_authorization(header)
            except DigestError:
                metrics.ERRORS.labels(SVC, "sip_auth_failed").inc()
                self.uas.reject(d, 403)
                return False, None
        c = self.trunks.classify(d.peer.host, presented.username if presented else None)
        if c.kind == "trunk":
            return True, c.trunks[0]
        if c.kind == "fallback":
            return True, None
        if c.kind == "challenge":
            self.uas.reject(d, 401, [("WWW-Authenticate", h) for h in self.digest.challenges(c.algorithms)])
            return False, None
        if c.kind == "verify" and presented is not None:
            for t in c.trunks:
                if t.inbound_username is None or t.inbound_password_secret is None:
                    continue
                password = await tenant_secret(self.box, self.secrets, t.tenant_id, t.inbound_password_secret)
                if password is None:
                    continue
                verdict = self.digest.verify(presented, method=req.method, username=t.inbound_username,
                                             password=password, algorithms=t.digest_algorithms)
                if verdict == "ok":
                    return True, t
                if verdict == "stale":
                    self.uas.reject(d, 401, [("WWW-Authenticate", h)
                                             for h in self.digest.challenges(t.digest_algorithms, stale=True)])
                    return False, None
        metrics.ERRORS.labels(SVC, "sip_auth_failed").inc()
        log.info("sip_trunk_refused", detail="no trunk takes this source with these credentials")
        if presented is not None:
            self._guessing(d.peer.host, failed=True)
        self.uas.reject(d, 403)
        return False, None

    async def _answer(self, d: Dialog, req: Request) -> None:
        offer: sdp.Offer | None = None
        if req.body.strip():
            try:
                offer = sdp.parse(req.body)
                sdp.negotiate(offer, address=self.address, port=9)  # can we take it at all?
            except sdp.NoCommonCodec:
                self.uas.reject(d, 488, [("Warning", '305 - "Incompatible media format"')])
                return
            except sdp.SdpError:
                self.uas.reject(d, 400)
                return
        taken, trunk = await self._authorize(d, req)
        if not taken:
            return
        if trunk is not None:
            number = trunk_number(trunk, req.uri.user) or trunk_number(trunk, req.to_address.uri.user)
        else:
            number = called_number(req, self.settings)
        if number is None:
            self.uas.reject(d, 404)
            return
        pid = provider_id(d.call_id)
        from_number = normalise_number(req.from_address.uri.user, self.settings.sip_default_country_prefix)
        call_id = await self.desk.create_call(channel=CHANNEL, to_number=number, from_number=from_number,
                                              provider_call_id=pid,
                                              tenant_id=trunk.tenant_id if trunk is not None else None)
        if call_id is None:
            self.uas.reject(d, 404)
            return
        if trunk is not None:
            log.info("sip_trunk_call", call_id=call_id, tenant_id=trunk.tenant_id, trunk_id=trunk.id)
        call: SipCall | None = None
        reason = events.EndReason.connection_lost
        try:
            if d.state == "terminated":
                reason = events.EndReason.caller_hangup  # CANCELled while the call was being created
                return
            try:
                first = sdp.negotiate(offer, address=self.address, port=9) if offer is not None \
                    else sdp.placeholder("")
                call = new_call(d, first, jitter_s=self.settings.sip_jitter_ms / 1000, on_close=self._call_closed)
                call.trunk, call.signalling = trunk, self.uas
                port = await call.bind(self.settings.sip_bind_host, self.rtp_ports)
            except NoFreePort as e:
                log.warning("sip_no_rtp_port", call_id=call_id, error=str(e))
                self.uas.reject(d, 503, [("Retry-After", "5")])
                reason = events.EndReason.error
                return
            if offer is not None:
                call.update(sdp.negotiate(offer, address=self.address, port=port, session_id=_session_id(d),
                                          session_version=1))
            else:  # a delayed offer: ours goes in the 200, the answer comes in the ACK
                call.update(sdp.placeholder(sdp.make_offer(address=self.address, port=port,
                                                           session_id=_session_id(d))))
            d.app = call
            if d.state == "terminated":
                reason = events.EndReason.caller_hangup
                return
            self.uas.ring(d)
            if self.settings.sip_ring_ms:
                ring = self._rings[d.key] = asyncio.Event()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ring.wait(), self.settings.sip_ring_ms / 1000)
                self._rings.pop(d.key, None)
            waiting: asyncio.Future[bytes] | None = None
            if offer is None:
                waiting = self._acks[d.key] = asyncio.get_running_loop().create_future()
            if not self.uas.answer(d, call.negotiated.sdp):
                reason = events.EndReason.caller_hangup
                return
            if waiting is not None:
                body = await waiting
                try:
                    call.update(sdp.accept_answer(sdp.parse(body), call.negotiated.sdp))
                except ValueError:
                    log.info("sip_delayed_offer_unanswered", call_id=call_id,
                             detail="the ACK carried no usable SDP answer")
                    reason = events.EndReason.protocol_error
                    return
            call.start(call_id, stream_id=pid)
            log.info("sip_call_answered", call_id=call_id, transport=d.peer.transport,
                     encoding=call.negotiated.encoding, dtmf=call.negotiated.dtmf_payload_type is not None,
                     delayed_offer=offer is None)
            await self.desk.serve(call, call.messages())
        except asyncio.CancelledError:
            reason = events.EndReason.shutdown
            raise
        finally:
            self._rings.pop(d.key, None)
            self._acks.pop(d.key, None)
            if call is not None:
                await call.close(reason)
            else:
                self.uas.hangup(d)
            # a call that never bound to a session has not been ended by one
            with contextlib.suppress(Exception):
                await self.desk.end_by_provider_id(pid, reason)

    # ------------------------------------------------------------ outbound calls (dialing.py's Dialer)
    async def refusal(self, request: events.DialRequest) -> str | None:
        """Why this ingress cannot place the call at all (the dial handler refuses it before creating it)."""
        if not self.settings.sip_enabled or self.udp is None:
            return "SIP is not enabled on this ingress"
        trunk = self.trunks.get(request.trunk_id) if request.trunk_id else None
        if trunk is None or trunk.tenant_id != request.tenant_id:
            return "no such SIP trunk for this tenant"
        if not trunk.outbound_proxy:
            return "the SIP trunk has no outbound proxy"
        return None

    async def dial(self, request: events.DialRequest) -> DialOutcome:
        """Call ``request.to_number`` through the tenant's trunk: UAC INVITE to its outbound proxy (digest when
        challenged), ``on_status(call_id, "ringing")`` on 180/183; once answered the call runs like an inbound
        one (its record must exist in KV ``calls``: the dial handler makes it) and ``answered`` is returned."""
        refused = await self.refusal(request)
        trunk = self.trunks.get(request.trunk_id) if request.trunk_id else None
        if refused is not None or trunk is None or not trunk.outbound_proxy:
            return DialOutcome("failed", refused or "no such SIP trunk")
        if len(self._calls) >= self.settings.sip_max_calls:
            return DialOutcome("failed", "this ingress is at SIP_MAX_CALLS")
        try:
            host, port = _host_port(trunk.outbound_proxy)
            address = await checked_address(self.egress, host, port)
            peer = (Peer("UDP", address, port) if trunk.outbound_transport == "udp"
                    else await self._tcp_connect(address, port))
        except BlockedAddress as e:
            return DialOutcome("failed", str(e)[:200])
        except (ValueError, OSError, TimeoutError) as e:
            return DialOutcome("failed", f"the trunk's outbound proxy cannot be reached: {safe_error(e, 120)}")
        credentials = None
        if trunk.outbound_username and trunk.outbound_password_secret:
            password = await tenant_secret(self.box, self.secrets, trunk.tenant_id, trunk.outbound_password_secret)
            if password is None:
                return DialOutcome("failed", "the trunk's outbound password cannot be opened")
            credentials = Credentials(trunk.outbound_username, password)
        holder: list[SipCall] = []

        def on_packet(data: bytes, addr: tuple[str, int]) -> None:
            if holder:
                holder[0]._on_packet(data, addr)

        try:
            media = await bind_rtp(self.settings.sip_bind_host, self.rtp_ports, on_packet)
        except NoFreePort as e:
            return DialOutcome("failed", str(e))
        offer = sdp.make_offer(address=self.address, port=int(media.get_extra_info("sockname")[1]),
                               session_id=str(random.getrandbits(31)))
        target = f"sip:{request.to_number}@{_uri_host(host)}:{port}"
        caller = request.from_number or trunk.outbound_caller_id or "anonymous"

        async def ringing() -> None:
            if self.on_status is not None:
                await self.on_status(request.call_id, "ringing")

        answered = False
        try:
            result = await sip_uac.invite(self.uas, peer, request_uri=target, to_uri=target,
                                          from_uri=f"sip:{caller}@{_uri_host(self.address)}", sdp=offer,
                                          credentials=credentials, timeout_s=self.settings.sip_dial_timeout_s,
                                          on_ringing=ringing)
            log.info("sip_dial_result", call_id=request.call_id, tenant_id=trunk.tenant_id, trunk_id=trunk.id,
                     status=result.status, detail=result.detail)
            if result.status != "answered" or result.dialog is None:
                return DialOutcome(result.status, result.detail)
            d = result.dialog
            try:
                n = sdp.accept_answer(sdp.parse(result.answer), offer)
            except ValueError:
                self.uas.hangup(d)
                return DialOutcome("failed", "the callee's answer has no usable SDP")
            call = new_call(d, n, jitter_s=self.settings.sip_jitter_ms / 1000, on_close=self._call_closed)
            call.attach(media)
            call.trunk, call.signalling = trunk, self.uas
            holder.append(call)
            d.app = call
            task = asyncio.create_task(self._serve_outbound(call, request.call_id, provider_id(d.call_id)),
                                       name="sip-outbound")
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)
            answered = True
            return DialOutcome("answered")
        finally:
            if not answered:
                media.close()

    async def _serve_outbound(self, call: SipCall, call_id: str, pid: str) -> None:
        reason = events.EndReason.connection_lost
        try:
            call.start(call_id, stream_id=pid)
            await self.desk.serve(call, call.messages())
        except asyncio.CancelledError:
            reason = events.EndReason.shutdown
            raise
        finally:
            await call.close(reason)

    def _call_closed(self, call: SipCall, reason: events.EndReason) -> None:
        if not call.hung_up_by_caller:
            self.uas.hangup(call.dialog)


def _session_id(d: Dialog) -> str:
    return str(int(hashlib.sha256(d.local_tag.encode()).hexdigest()[:8], 16))


def _next_version(call: SipCall) -> int:
    line = next((x for x in call.negotiated.sdp.split("\r\n") if x.startswith("o=")), "o=- 0 1")
    try:
        return int(line.split()[2]) + 1
    except (IndexError, ValueError):
        return 2


def _host_port(value: str) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` -> (host, port), 5060 by default."""
    value = value.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    else:
        host, port = value, ""
    if not host or (port and not port.isdigit()) or not 0 < int(port or 5060) < 65536:
        raise ValueError("the outbound proxy is not host[:port]")
    return host, int(port or 5060)


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _content_length(head: bytes) -> int | None:
    """The Content-Length of a message head (``l`` is its compact form); required on a stream transport."""
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() in (b"content-length", b"l"):
            v = value.strip()
            return int(v) if v.isdigit() else None
    return None

