"""WebRTC: a browser (any WebRTC peer) talks to an agent. aiortc, Opus in and out, non-trickle offer/answer.

Signalling never reaches ingress from the browser: the browser talks only to control-api (its one origin), which
checks that the user or API key may read the agent, mints a short-lived call token bound to tenant, agent and
channel, and forwards the offer with the token as a core request on ``ingress.rpc.webrtc.offer`` (a queue group:
one replica answers). That replica verifies the token, records its id in the ``calls`` bucket with ``create`` (so a
second use fails on every replica), creates the call for the granted agent and answers once ICE gathering is done.
The call binds (``Started``) when the peer connection is connected; one that never connects, or fails, ends as
``connection_lost``; a peer that closes the connection hangs up (``CallerHungUp``).

Media: aiortc decodes Opus; caller audio is resampled to PCM16 mono 16 kHz and cut into 20 ms frames. Agent audio
goes into a bounded queue that ``PlayoutTrack`` plays: aiortc pulls ``recv``, which hands out one 20 ms frame per
tick of the track's own clock (silence when the queue is empty). A mark is reported when the tick after the audio
queued before it comes due, so ``MarkPlayed`` follows the server's playout clock; ``clear`` empties the queue at
once.

Candidates: aioice 0.13 gathers one host candidate per interface address (never loopback) on an ephemeral port,
plus one per STUN/TURN server. ``CandidatePolicy`` adapts that per peer connection: which addresses, a loopback
candidate (a browser or test peer on the same machine), a UDP port range (firewalls, Kubernetes hostPorts), and an
advertised address written into the host candidates instead of the interface's (a 1:1 NAT: the node's or the load
balancer's address).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import ipaddress
import random
import socket
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import av
from aioice import Candidate
from aioice import ice as aioice_ice
from aioice.candidate import candidate_foundation, candidate_priority
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcicetransport import parse_stun_turn_uri
from nats.js.errors import KeyWrongLastSequenceError
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from voice_runtime import calltoken, metrics
from voice_runtime.handlers import Message
from voice_runtime.logging import get_logger, safe_error
from voice_runtime.ports import BusPort, Unsubscribable
from voice_runtime.settings import _Settings
from voice_schemas import events, subjects
from voice_schemas import webrtc as rpc
from voice_schemas.audio import FRAME_BYTES, SAMPLE_RATE, SAMPLES_PER_FRAME
from voice_schemas.streams import KV_CALLS
from voice_schemas.webrtc import WebRtcAnswer, WebRtcError, WebRtcOffer

from .. import tones
from .base import CallDesk, CallerAudio, CallerHungUp, Endpoint, Inbound, MarkPlayed, ProtocolError, Started, Transport

log = get_logger(__name__)
SVC = "ingress"
CHANNEL = events.Channel.webrtc
MEDIA_FORMAT = "audio/opus;rate=48000"
OFFER_QUEUE = "ingress-webrtc"  # the queue group: one replica answers each offer
FRAME_S = SAMPLES_PER_FRAME / SAMPLE_RATE
SILENCE = bytes(FRAME_BYTES)
# per-call bounds: the session keeps only playout_lead_ms (60 ms) queued in the track; a second is room for a busy
# loop, more is dropped. The inbox holds caller events until the session takes them (a few, unless it stalls).
MAX_QUEUED_FRAMES = 50
MAX_QUEUED_MARKS = 64
INBOX_LIMIT = 256
INBOX_AUDIO_LIMIT = INBOX_LIMIT - 32  # the rest is kept for marks, the start and the end
MAX_CLOCK_LAG_S = 0.2  # recv() called this late (a stalled loop): the clock restarts instead of bursting frames
CLOSE_TIMEOUT_S = 5.0
OPUS = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType.lower() == "audio/opus"]
_FRAMES_DROPPED_IN = metrics.AUDIO_FRAMES.labels(SVC, "in", "dropped")
_FRAMES_DROPPED_OUT = metrics.AUDIO_FRAMES.labels(SVC, "out", "dropped")


class WebRtcSettings(_Settings):
    """WebRTC settings of ingress: ICE servers and which host candidates, ports and address the server offers."""

    webrtc_ice_servers: str = Field(
        "",
        description="Comma-separated STUN/TURN URLs the server's side uses (stun:host:port, "
        "turn:host:port?transport=udp; aiortc uses the first of each kind). Empty: host candidates only, which "
        "works offline on one machine and on a LAN (the browser's own ICE servers are the page's)",
    )
    webrtc_turn_username: str = Field("", description="Username for the TURN URLs")
    webrtc_turn_credential: SecretStr | None = Field(None, description="Password for the TURN URLs")
    webrtc_host_addresses: str = Field(
        "",
        description="Comma-separated local IP addresses to offer host candidates on. Empty: every interface "
        "address (aioice never offers loopback)",
    )
    webrtc_loopback_candidate: bool = Field(
        False,
        description="Also offer a 127.0.0.1 host candidate (a browser or test peer on the same machine)",
    )
    webrtc_advertised_address: str = Field(
        "",
        description="IP address written into the host candidates instead of the interface's (1:1 NAT: the "
        "node's or load balancer's address that forwards the UDP ports to this replica). Empty: the interface's",
    )
    webrtc_udp_port_min: int | None = Field(
        None,
        ge=1024,
        le=65535,
        description="First UDP port for media (with WEBRTC_UDP_PORT_MAX). Unset: ephemeral",
    )
    webrtc_udp_port_max: int | None = Field(
        None,
        ge=1024,
        le=65535,
        description="Last UDP port for media: one port per web call per host address",
    )
    webrtc_max_calls: int = Field(
        100,
        ge=1,
        le=10_000,
        description="Web calls (connecting or live) one replica takes; more are refused (busy)",
    )
    webrtc_max_offer_bytes: int = Field(
        64 * 1024,
        ge=4096,
        le=512 * 1024,
        description="Larger offer requests are refused (a browser's is a few KiB)",
    )

    @field_validator("webrtc_ice_servers")
    @classmethod
    def _ice_servers(cls, value: str) -> str:
        for url in _split(value):
            try:
                parse_stun_turn_uri(url)
            except ValueError as e:
                raise ValueError("WEBRTC_ICE_SERVERS holds a URL that is not stun:, turn: or turns:") from e
        return value

    @field_validator("webrtc_host_addresses", "webrtc_advertised_address")
    @classmethod
    def _addresses(cls, value: str) -> str:
        for a in _split(value):
            ipaddress.ip_address(a)  # a ValueError names the setting
        return value

    @model_validator(mode="after")
    def _port_range(self) -> WebRtcSettings:
        lo, hi = self.webrtc_udp_port_min, self.webrtc_udp_port_max
        if (lo is None) != (hi is None):
            raise ValueError("set both WEBRTC_UDP_PORT_MIN and WEBRTC_UDP_PORT_MAX, or neither")
        if lo is not None and hi is not None and lo > hi:
            raise ValueError("WEBRTC_UDP_PORT_MIN is above WEBRTC_UDP_PORT_MAX")
        return self

    def ice_servers(self) -> list[RTCIceServer]:
        """The server side's ICE servers: none unless configured (aiortc would otherwise use a public STUN)."""
        credential = self.webrtc_turn_credential.get_secret_value() if self.webrtc_turn_credential else None
        out = []
        for url in _split(self.webrtc_ice_servers):
            if url.startswith("turn"):
                out.append(RTCIceServer(urls=url, username=self.webrtc_turn_username or None, credential=credential))
            else:
                out.append(RTCIceServer(urls=url))
        return out


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


# ---------------------------------------------------------------- candidates
class NoFreePort(RuntimeError):
    """Every UDP port of the configured range is in use on an address."""


GatherFn = Callable[[int, list[str], int], Awaitable[list[Candidate]]]


class CandidatePolicy:
    """Which host candidates a peer connection gathers: addresses, loopback, a port range, an advertised address.

    aioice has no settings for these; ``apply`` wraps the gathering of each of the connection's ICE agents (its
    ``get_component_candidates``, aioice 0.13) before the local description is set, where gathering runs. Without
    a port range aioice binds the sockets itself; with one they are bound here, in the range, exactly as aioice
    does it, and server-reflexive candidates are asked for them.
    """

    def __init__(
        self,
        *,
        addresses: list[str] | None = None,
        loopback: bool = False,
        ports: tuple[int, int] | None = None,
        advertised: str | None = None,
    ) -> None:
        self.addresses = addresses
        self.loopback = loopback
        self.ports = ports
        self.advertised = ipaddress.ip_address(advertised) if advertised else None

    @classmethod
    def from_settings(cls, s: WebRtcSettings) -> CandidatePolicy:
        ports = None
        if s.webrtc_udp_port_min is not None and s.webrtc_udp_port_max is not None:
            ports = (s.webrtc_udp_port_min, s.webrtc_udp_port_max)
        return cls(
            addresses=_split(s.webrtc_host_addresses) or None,
            loopback=s.webrtc_loopback_candidate,
            ports=ports,
            advertised=s.webrtc_advertised_address or None,
        )

    def apply(self, pc: RTCPeerConnection) -> None:
        """Call after the transceivers exist (``setRemoteDescription`` / ``addTransceiver``) and before
        ``setLocalDescription``."""
        seen: set[int] = set()
        for t in pc.getTransceivers():
            gatherer = t.sender.transport.transport.iceGatherer
            conn: Any = gatherer._connection  # the aioice Connection this gatherer drives
            if id(conn) in seen:
                continue
            seen.add(id(conn))
            original: GatherFn = conn.get_component_candidates

            async def gather(
                component: int,
                addresses: list[str],
                timeout: int = 5,
                *,
                _conn: Any = conn,
                _original: GatherFn = original,
            ) -> list[Candidate]:
                return await self._gather(_conn, _original, component, addresses, timeout)

            conn.get_component_candidates = gather

    def _addresses(self, found: list[str]) -> list[str]:
        wanted = list(self.addresses) if self.addresses is not None else list(found)
        if self.loopback and "127.0.0.1" not in wanted:
            wanted.append("127.0.0.1")
        return wanted

    async def _gather(
        self, conn: Any, original: GatherFn, component: int, found: list[str], timeout: int
    ) -> list[Candidate]:
        addresses = self._addresses(found)
        if self.ports is None:
            candidates = await original(component, addresses, timeout)
        else:
            hosts = await self._bind_in_range(conn, component, addresses)
            candidates = [p.local_candidate for p in hosts]
            candidates += await self._reflexive(conn, hosts, timeout)
            candidates += await original(component, [], timeout)  # relayed ones (TURN), when configured
        return [self._advertise(c) for c in candidates]

    async def _bind_in_range(self, conn: Any, component: int, addresses: list[str]) -> list[Any]:
        assert self.ports is not None
        lo, hi = self.ports
        loop = asyncio.get_running_loop()
        protocols = []
        for address in addresses:
            start = random.randint(lo, hi)  # spread concurrent calls over the range
            for port in [*range(start, hi + 1), *range(lo, start)]:
                try:
                    transport, protocol = await loop.create_datagram_endpoint(
                        lambda: aioice_ice.StunProtocol(conn), local_addr=(address, port)
                    )
                except OSError:
                    continue
                break
            else:
                raise NoFreePort(f"no free UDP port in {lo}-{hi} on {address}")
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, aioice_ice.turn.UDP_SOCKET_BUFFER_SIZE)
            host, bound = transport.get_extra_info("sockname")[:2]
            protocol.local_candidate = Candidate(
                foundation=candidate_foundation("host", "udp", host),
                component=component,
                transport="udp",
                priority=candidate_priority(component, "host"),
                host=host,
                port=bound,
                type="host",
            )
            conn._protocols.append(protocol)
            protocols.append(protocol)
        return protocols

    @staticmethod
    async def _reflexive(conn: Any, protocols: list[Any], timeout: int) -> list[Candidate]:
        if not conn.stun_server:
            return []
        asks = [
            aioice_ice.server_reflexive_candidate(p, conn.stun_server)
            for p in protocols
            if ipaddress.ip_address(p.local_candidate.host).version == 4
        ]
        if not asks:
            return []
        tasks = [asyncio.ensure_future(a) for a in asks]
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for t in pending:
            t.cancel()
        return [t.result()[0] for t in done if t.exception() is None]

    def _advertise(self, c: Candidate) -> Candidate:
        if self.advertised is None or c.type != "host":
            return c
        address = ipaddress.ip_address(c.host)
        if address.is_loopback or address.version != self.advertised.version:
            return c
        host = str(self.advertised)
        return Candidate(
            foundation=candidate_foundation("host", "udp", host),
            component=c.component,
            transport=c.transport,
            priority=c.priority,
            host=host,
            port=c.port,
            type="host",
        )


# ---------------------------------------------------------------- outbound audio
@dataclass(frozen=True, slots=True)
class _Mark:
    name: str


class PlayoutTrack(MediaStreamTrack):
    """The agent's audio track: PCM16 16 kHz frames from a bounded queue, paced in real time by ``recv``.

    aiortc's sender calls ``recv`` for each frame it encodes and sends; ``recv`` returns when the next frame is
    due on the track's clock (20 ms steps from the first call), silence when the queue is empty. Marks ride in the
    queue: one is reported (``on_mark``) when the frame after the audio queued before it comes due.
    """

    kind = "audio"

    def __init__(
        self, on_mark: Callable[[str], None], *, max_frames: int = MAX_QUEUED_FRAMES, max_marks: int = MAX_QUEUED_MARKS
    ) -> None:
        super().__init__()
        self.on_mark = on_mark
        self.max_frames, self.max_marks = max_frames, max_marks
        self._queue: deque[bytes | _Mark] = deque()
        self._frames = 0
        self._marks = 0
        self._start: float | None = None
        self._pts = 0
        self.frames_sent = 0  # agent frames handed to the encoder (not silence)

    @property
    def queued_frames(self) -> int:
        return self._frames

    def put_audio(self, pcm: bytes) -> None:
        if len(pcm) != FRAME_BYTES:
            raise ValueError(f"agent frames are {FRAME_BYTES} bytes")
        if self._frames >= self.max_frames:
            _FRAMES_DROPPED_OUT.inc()  # nobody pulls the track (the sender stalled): the newest is dropped
            return
        self._queue.append(pcm)
        self._frames += 1

    def put_mark(self, name: str) -> None:
        if self._marks >= self.max_marks:
            self.on_mark(name)  # bounded: reported early rather than kept
            return
        self._queue.append(_Mark(name))
        self._marks += 1

    def clear(self) -> None:
        """Drop every queued frame (and the marks between them) at once: nothing more of it is sent."""
        self._queue.clear()
        self._frames = self._marks = 0

    def _next_pcm(self) -> bytes:
        while self._queue:
            item = self._queue.popleft()
            if isinstance(item, _Mark):
                self._marks -= 1
                self.on_mark(item.name)  # all audio queued before it has been sent
                continue
            self._frames -= 1
            self.frames_sent += 1
            return item
        return SILENCE

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._start is None:
            self._start = now
        else:
            self._pts += SAMPLES_PER_FRAME
            due = self._start + self._pts / SAMPLE_RATE
            if due > now:
                await asyncio.sleep(due - now)
            elif now - due > MAX_CLOCK_LAG_S:
                self._start = now - self._pts / SAMPLE_RATE
        if self.readyState != "live":
            raise MediaStreamError
        frame = av.AudioFrame(format="s16", layout="mono", samples=SAMPLES_PER_FRAME)
        frame.planes[0].update(self._next_pcm())
        frame.pts = self._pts
        frame.sample_rate = SAMPLE_RATE
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        return frame


# ---------------------------------------------------------------- inbound audio
class CallerResampler:
    """Decoded caller audio (aiortc: 48 kHz stereo s16) -> PCM16 mono 16 kHz frames of 20 ms."""

    def __init__(self) -> None:
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        self._pending = bytearray()

    def frames(self, frame: av.AudioFrame) -> list[bytes]:
        for out in self._resampler.resample(frame):
            self._pending += out.to_ndarray().tobytes()
        n = len(self._pending) // FRAME_BYTES
        chunks = [bytes(self._pending[i * FRAME_BYTES : (i + 1) * FRAME_BYTES]) for i in range(n)]
        del self._pending[: n * FRAME_BYTES]
        return chunks


# ---------------------------------------------------------------- the transport
_END = object()


class WebRtcCall(Transport):
    """One browser call: an aiortc peer connection, its caller track read into events, ``PlayoutTrack`` out.

    Inbound messages are the transport's own events (``messages()``), produced from the connection's state, the
    caller's track and the playout track's marks.
    """

    channel = CHANNEL
    media_format = MEDIA_FORMAT
    can_clear_queued = True  # the track's queue is the only one: what is still in it is never sent

    def __init__(self, pc: RTCPeerConnection, call_id: str | None = None) -> None:
        self.pc = pc
        self.call_id = call_id
        self.stream_id: str | None = None
        self.track = PlayoutTrack(self._mark_played)
        self.started = False
        self.closed = False
        self._inbox: asyncio.Queue[Any] = asyncio.Queue(INBOX_LIMIT)
        self._ended = False
        self._reader: asyncio.Task[None] | None = None
        pc.on("connectionstatechange", self._state_changed)
        pc.on("track", self._track)

    def bind(self, call_id: str) -> None:
        """The call this connection belongs to (created once the offer was accepted)."""
        self.call_id = call_id
        if self.pc.connectionState == "connected":
            self._connected()

    # ------------------------------------------------------------ aiortc events
    def _state_changed(self) -> None:
        state = self.pc.connectionState
        if state == "connected":
            self._connected()
        elif state == "failed":
            self._end_inbound()  # connection lost
        elif state == "closed" and not self.closed:
            self._hung_up()

    def _connected(self) -> None:
        if self.started or self.call_id is None or self.closed:
            return
        self.started = True
        self._push(Started(call_id=self.call_id, stream_id=self.stream_id))

    def _track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._reader is None:
            self._reader = asyncio.create_task(self._read(track), name=f"webrtc-in:{self.call_id}")

    def _hung_up(self) -> None:
        if self.started:
            self._push(CallerHungUp())
        self._end_inbound()

    async def _read(self, track: MediaStreamTrack) -> None:
        resampler = CallerResampler()
        try:
            while True:
                frame = await track.recv()
                if not isinstance(frame, av.AudioFrame):
                    continue
                frames = resampler.frames(frame)
                if frames and self.started:
                    self._push(CallerAudio(tuple(frames)))
        except MediaStreamError:  # the caller stopped sending (RTCP BYE, or the connection went)
            if not self.closed:
                self._hung_up()

    def _mark_played(self, name: str) -> None:
        self._push(MarkPlayed(name))

    def _push(self, event: Inbound) -> None:
        if self._ended:
            return
        limit = INBOX_AUDIO_LIMIT if isinstance(event, CallerAudio) else INBOX_LIMIT - 1  # one slot for the end
        if self._inbox.qsize() >= limit:
            if isinstance(event, CallerAudio):
                _FRAMES_DROPPED_IN.inc(len(event.frames))
            else:
                log.warning("webrtc_event_dropped", call_id=self.call_id, kind=type(event).__name__)
            return
        self._inbox.put_nowait(event)

    def _end_inbound(self) -> None:
        if not self._ended:
            self._ended = True
            self._inbox.put_nowait(_END)

    async def messages(self) -> AsyncIterator[Any]:
        """The connection's events, until it ends."""
        while True:
            item = await self._inbox.get()
            if item is _END:
                return
            yield item

    # ------------------------------------------------------------ Transport
    def decode(self, message: Any) -> list[Inbound]:
        if not isinstance(message, Started | CallerAudio | MarkPlayed | CallerHungUp):
            raise ProtocolError(f"unexpected {type(message).__name__}")
        return [message]

    def encode_audio(self, pcm: bytes, *, end_of_reply: bool = False) -> list[Any]:
        return [pcm]  # PCM goes to the track as is: aiortc's Opus encoder resamples it

    def encode_mark(self, name: str) -> list[Any]:
        return [_Mark(name)]

    def encode_clear(self) -> list[Any]:
        return []

    async def send(self, message: Any) -> None:
        if self.closed:
            raise ConnectionError("the peer connection is closed")
        if isinstance(message, _Mark):
            self.track.put_mark(message.name)
        else:
            self.track.put_audio(message)

    async def clear(self) -> int:
        dropped = self.track.queued_frames
        self.track.clear()
        return dropped

    async def send_dtmf(self, digits: str) -> None:
        """In-band tones on the agent's track, behind the audio queued there; the track's queue is bounded, so the
        tones go in as it drains (returns with at most a second of them still queued)."""
        for frame in tones.pcm16_frames(digits):
            while self.track.queued_frames >= self.track.max_frames - 1:
                if self.closed:
                    raise ConnectionError("the peer connection is closed")
                await asyncio.sleep(0.02)
            await self.send(frame)

    async def close(self, reason: events.EndReason) -> None:
        if self.closed:
            return
        self.closed = True
        self.track.stop()
        self._end_inbound()
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
        # shielded: aiortc's close() awaits one shared future, and cancelling a waiter would cancel it for all
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self.pc.close()), CLOSE_TIMEOUT_S)


# ---------------------------------------------------------------- the endpoint
class WebCallDesk(CallDesk, Protocol):
    """What the WebRTC endpoint needs of the ingress service: calls granted to one agent, and the bus."""

    bus: BusPort | None
    kv: dict[str, Any]

    async def create_call(
        self,
        *,
        channel: events.Channel,
        to_number: str,
        from_number: str | None,
        provider_call_id: str | None,
        agent_id: str | None = None,
        tenant_id: str | None = None,
    ) -> str | None: ...


class OfferRefused(Exception):
    """An offer that gets an error answer instead of a call."""

    def __init__(self, error: WebRtcError, detail: str) -> None:
        super().__init__(detail)
        self.error, self.detail = error, detail


class WebRtcEndpoint(Endpoint):
    """Answers offers forwarded by control-api (``ingress.rpc.webrtc.offer``) and runs each call's connection."""

    def __init__(self, desk: WebCallDesk, settings: WebRtcSettings, token_key: bytes | None) -> None:
        super().__init__(desk)
        self.web_desk = desk
        self.settings = settings
        self.token_key = token_key
        self.policy = CandidatePolicy.from_settings(settings)
        self.ice_servers = settings.ice_servers()
        self._sub: Unsubscribable | None = None
        self._answering: set[asyncio.Task[None]] = set()
        self._calls: dict[str, asyncio.Task[None]] = {}  # call id -> the task serving its connection

    @property
    def live_calls(self) -> int:
        return len(self._calls)

    async def start(self) -> None:
        bus = self.web_desk.bus
        assert bus is not None
        if self.token_key is None:
            log.warning("webrtc_calls_refused", detail="no CALL_TOKEN_KEY: every browser call is refused")
        self._sub = await bus.subscribe(subjects.ingress_rpc(rpc.CHANNEL, rpc.OFFER), self._on_offer, queue=OFFER_QUEUE)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        tasks = [*self._answering, *self._calls.values()]
        for t in tasks:
            t.cancel()  # a connection being served ends its call with `shutdown`
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT_S + 2)

    # ------------------------------------------------------------ signalling
    async def _on_offer(self, msg: Message) -> None:
        # callbacks of one subscription run one at a time: each offer is answered in a task of its own
        if len(self._answering) >= self.settings.webrtc_max_calls:
            await self._reply(msg, WebRtcAnswer(error=WebRtcError.busy, detail="too many offers in progress"))
            return
        task = asyncio.create_task(self._answer(msg), name="webrtc-offer")
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def _answer(self, msg: Message) -> None:
        try:
            answer = await self.offer(msg.data)
        except OfferRefused as e:
            metrics.ERRORS.labels(SVC, f"webrtc_{e.error.value}").inc()
            # an SDP parser's message may quote the offer (the caller's addresses): the log keeps only the kind
            log.info(
                "webrtc_offer_refused", error=e.error.value, detail=None if e.error == WebRtcError.invalid else e.detail
            )
            answer = WebRtcAnswer(error=e.error, detail=e.detail)
        except Exception as e:
            metrics.ERRORS.labels(SVC, "webrtc_offer").inc()
            log.error("webrtc_offer_failed", error=safe_error(e, 200))
            answer = WebRtcAnswer(error=WebRtcError.unavailable, detail="ingress could not answer the offer")
        await self._reply(msg, answer)

    async def _reply(self, msg: Message, answer: WebRtcAnswer) -> None:
        bus = self.web_desk.bus
        if msg.reply and bus is not None:
            with contextlib.suppress(Exception):
                await bus.publish_nowait(msg.reply, answer.model_dump_json(exclude_none=True).encode())

    async def offer(self, data: bytes) -> WebRtcAnswer:
        """Verify the grant, use it up, create the call and answer the offer (ICE gathered: no trickle)."""
        req = self._parse(data)
        grant = self._verify(req.token)
        if self.live_calls >= self.settings.webrtc_max_calls:
            raise OfferRefused(WebRtcError.busy, "this replica has no room for another browser call")
        await self._use_up(grant)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=self.ice_servers))
        call = WebRtcCall(pc)
        provider_call_id = _provider_id(grant)
        call_id: str | None = None
        try:
            await self._accept(pc, call, req.sdp)
            call_id = await self.web_desk.create_call(
                channel=CHANNEL,
                to_number="",
                from_number=None,
                provider_call_id=provider_call_id,
                agent_id=grant.agent_id,
                tenant_id=grant.tenant_id,
            )
            if call_id is None:
                raise OfferRefused(WebRtcError.not_found, "no such active agent in the granted tenant")
            call.bind(call_id)
            self.policy.apply(pc)
            try:
                await pc.setLocalDescription(await pc.createAnswer())
            except NoFreePort as e:
                raise OfferRefused(WebRtcError.busy, str(e)) from e
        except BaseException:
            await call.close(events.EndReason.error)
            if call_id is not None:  # created, never connected: it ends here
                with contextlib.suppress(Exception):
                    await self.web_desk.end_by_provider_id(provider_call_id, events.EndReason.error)
            raise
        self._calls[call_id] = asyncio.create_task(self._serve(call, provider_call_id), name=f"webrtc:{call_id}")
        log.info(
            "webrtc_call_answered",
            call_id=call_id,
            tenant_id=grant.tenant_id,
            agent_id=grant.agent_id,
            granted_to=grant.subject,
        )
        return WebRtcAnswer(call_id=call_id, sdp=pc.localDescription.sdp)

    def _parse(self, data: bytes) -> WebRtcOffer:
        if len(data) > self.settings.webrtc_max_offer_bytes:
            raise OfferRefused(WebRtcError.invalid, "the offer is too large")
        try:
            return WebRtcOffer.model_validate_json(data)
        except ValidationError as e:
            errors = e.errors(include_url=False, include_input=False)
            where = ".".join(str(p) for p in errors[0]["loc"]) if errors else ""
            detail = f"{where}: {errors[0]['msg']}" if errors and where else "the request is not a valid offer"
            raise OfferRefused(WebRtcError.invalid, detail[:200]) from None

    def _verify(self, token: str) -> calltoken.CallGrant:
        if self.token_key is None:
            raise OfferRefused(WebRtcError.unavailable, "browser calls are not configured here (CALL_TOKEN_KEY)")
        try:
            return calltoken.verify(self.token_key, token, channel=rpc.CHANNEL)
        except calltoken.InvalidCallToken as e:
            raise OfferRefused(WebRtcError.refused, str(e)) from None

    async def _use_up(self, grant: calltoken.CallGrant) -> None:
        """A grant starts one call: its id is created once in KV ``calls``, where every replica sees it."""
        kv = self.web_desk.kv[KV_CALLS.bucket]
        try:
            await kv.create(subjects.grant_key(grant.jti), b"1")
        except KeyWrongLastSequenceError:
            raise OfferRefused(WebRtcError.refused, "call token already used") from None
        except subjects.InvalidSubjectToken:
            raise OfferRefused(WebRtcError.refused, "malformed call token claims") from None

    @staticmethod
    async def _accept(pc: RTCPeerConnection, call: WebRtcCall, sdp: str) -> None:
        """Take the offer: its audio is the caller's, ours is the playout track; other media stays inactive."""
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except Exception as e:
            raise OfferRefused(WebRtcError.invalid, f"the offer's SDP was refused: {e}"[:200]) from None
        audio = [t for t in pc.getTransceivers() if t.kind == "audio"]
        if len(audio) != 1:
            raise OfferRefused(WebRtcError.invalid, "the offer must have exactly one audio section")
        for t in pc.getTransceivers():
            if t.kind != "audio":
                t.direction = "inactive"
        audio[0].setCodecPreferences(OPUS)
        audio[0].sender.replaceTrack(call.track)
        audio[0].direction = "sendrecv"

    async def _serve(self, call: WebRtcCall, provider_call_id: str) -> None:
        reason = events.EndReason.connection_lost
        try:
            await self.desk.serve(call, call.messages())
        except asyncio.CancelledError:
            reason = events.EndReason.shutdown
            raise
        finally:
            self._calls.pop(call.call_id or "", None)
            await call.close(reason)
            # a connection that never came up opened no session, so nothing has ended its call yet
            with contextlib.suppress(Exception):
                await self.desk.end_by_provider_id(provider_call_id, reason)


def _provider_id(grant: calltoken.CallGrant) -> str:
    """The call's provider id: its grant's (one grant, one call), so the call can be ended by it."""
    return f"webrtc-{grant.jti}"
