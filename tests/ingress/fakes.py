"""A caller transport in memory, and an ingress service on the in-memory bus, for tests of the call logic.

``FakeTransport`` is a transport added the way a real one is (subclass ``Transport``, no edit of the session):
its inbound messages are the events themselves (or ``"garbage"``, a protocol error), and its far end behaves like
a phone: audio plays on a virtual 20 ms clock, a mark comes back once the audio before it has played, ``clear``
drops the queued audio (the frames whose time had not come: ``heard`` leaves them out) and returns the cleared marks
at once (as Twilio does). Its far end keeps time by ``clock`` (a test's ``VirtualClock.time``, or real time).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from voice_ingress.service import IngressService
from voice_ingress.settings import IngressSettings
from voice_ingress.transports.base import Inbound, MarkPlayed, ProtocolError, Started, Transport
from voice_runtime.memory import InMemoryBus
from voice_schemas import NumberRoute, events, subjects
from voice_schemas.audio import FRAME_BYTES, AudioFrame

FRAME_S = 0.02
NUMBER = "+15550100"
_END = object()


class VirtualClock:
    """A playout clock that moves only when playout sleeps: pacing is checked exactly, whatever the machine's
    load (``IngressService.clock``)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


@dataclass(frozen=True)
class Sent:
    at: float
    kind: str  # "audio" | "mark" | "clear"
    data: Any = None
    end_of_reply: bool = False
    plays_at: float = 0.0  # audio: when the far end starts playing it


class FakeTransport(Transport):
    channel = events.Channel.test
    media_format = "audio/L16;rate=16000"
    can_clear_queued = True  # like Twilio: a clear drops what the far end has not played

    def __init__(self, *, echo_marks: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream_id = "fake-stream"
        self.echo_marks = echo_marks
        self.clock = clock
        self.inbound: asyncio.Queue[Any] = asyncio.Queue()
        self.sent: list[Sent] = []
        self.closed_with: events.EndReason | None = None
        self.play_until = 0.0  # the far end's playout clock (monotonic)
        self.max_queued_frames = 0  # the most audio ever queued at the far end
        self.dropped_frames = 0  # queued audio that a clear dropped
        self.cleared_marks: list[str] = []
        self.unheard: set[int] = set()  # indices in ``sent`` of audio that a clear dropped before it played
        self._due: dict[str, asyncio.TimerHandle] = {}

    # ------------------------------------------------------------ driving it from a test
    def push(self, *items: Inbound | str) -> None:
        for item in items:
            self.inbound.put_nowait(item)

    async def messages(self) -> AsyncIterator[Any]:
        while True:
            item = await self.inbound.get()
            if item is _END:
                return
            yield item

    def disconnect(self) -> None:
        """The connection drops (no hang-up message)."""
        self.inbound.put_nowait(_END)

    def of(self, kind: str) -> list[Sent]:
        return [s for s in self.sent if s.kind == kind]

    def heard(self) -> list[Sent]:
        """The audio the caller heard (started playing before any clear), in the order played."""
        return [s for i, s in enumerate(self.sent) if s.kind == "audio" and i not in self.unheard]

    # ------------------------------------------------------------ Transport
    def decode(self, message: Any) -> list[Inbound]:
        if message == "garbage":
            raise ProtocolError("garbage on the wire")
        return [message]

    def encode_audio(self, pcm: bytes, *, end_of_reply: bool = False) -> list[Any]:
        assert len(pcm) == FRAME_BYTES
        return [("audio", pcm, end_of_reply)]

    def encode_mark(self, name: str) -> list[Any]:
        return [("mark", name)]

    def encode_clear(self) -> list[Any]:
        return [("clear",)]

    async def send(self, message: Any) -> None:
        now = self.clock()
        kind = message[0]
        if kind == "audio":
            plays_at = max(self.play_until, now)
            self.play_until = plays_at + FRAME_S
            self.max_queued_frames = max(self.max_queued_frames, round((self.play_until - now) / FRAME_S))
            self.sent.append(Sent(now, kind, message[1], message[2], plays_at))
        elif kind == "mark":
            name = message[1]
            self.sent.append(Sent(now, kind, name))
            if self.echo_marks:
                loop = asyncio.get_running_loop()
                self._due[name] = loop.call_at(loop.time() + max(0.0, self.play_until - now), self._played, name)
        else:
            self.sent.append(Sent(now, kind))
            self.dropped_frames += max(0, round((self.play_until - now) / FRAME_S))
            self.play_until = now
            self.unheard.update(i for i, s in enumerate(self.sent) if s.kind == "audio" and s.plays_at > now)
            for name, handle in self._due.items():
                handle.cancel()
                self.cleared_marks.append(name)
                self.push(MarkPlayed(name))
            self._due.clear()

    def _played(self, name: str) -> None:
        self._due.pop(name, None)
        self.push(MarkPlayed(name))

    async def close(self, reason: events.EndReason) -> None:
        if self.closed_with is None:
            self.closed_with = reason
            for handle in self._due.values():
                handle.cancel()
            self.inbound.put_nowait(_END)


def agent_frame(turn: str, chunk: int, i: int, *, last: bool = False, final: bool = False,
                epoch: int = 0) -> AudioFrame:
    """Agent audio whose first bytes say which frame it is: b'<turn>/<chunk>/<i>'."""
    tag = f"{turn}/{chunk}/{i}".encode()
    return AudioFrame(pcm=tag.ljust(FRAME_BYTES, b"\0"), seq=i, epoch=epoch, turn_id=turn, chunk=chunk,
                      last_in_chunk=last, final=final)


def tag(pcm: bytes) -> str:
    return pcm.rstrip(b"\0").decode()


def reply(turn: str, chunk_sizes: list[int], *, epoch: int = 0) -> list[list[AudioFrame]]:
    """A reply as tts sends it: per chunk, its frames (the last frame of the last chunk is final)."""
    out = []
    for c, n in enumerate(chunk_sizes):
        out.append([agent_frame(turn, c, i, last=i == n - 1, final=i == n - 1 and c == len(chunk_sizes) - 1,
                                epoch=epoch) for i in range(n)])
    return out


class Ingress:
    """An ingress service on an in-memory bus, with helpers to place calls through fake transports."""

    def __init__(self, **settings: Any) -> None:
        self.bus = InMemoryBus("ingress")
        # explicit Twilio settings: no token and unsigned requests refused, unless a test says otherwise
        self.service = IngressService(IngressSettings(**{"playout_lead_ms": 60, "start_timeout_s": 2.0,
                                                         "twilio_auth_token": None, "twilio_allow_unsigned": False,
                                                         **settings}))

    async def start(self) -> None:
        await self.service.start(bus=self.bus)
        route = NumberRoute(number=NUMBER, tenant_id="tenant-a", agent_id=self.service.settings.default_agent_id)
        await self.bus.kv["numbers"].put(subjects.number_key(NUMBER), route.model_dump_json().encode())

    async def stop(self) -> None:
        await self.service.stop()

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, **settings: Any) -> AsyncIterator[Ingress]:
        ingress = cls(**settings)
        await ingress.start()
        try:
            yield ingress
        finally:
            await ingress.stop()

    async def call(self, transport: FakeTransport, *,
                   provider_call_id: str | None = None) -> tuple[str, asyncio.Task[None]]:
        """Create a call, connect ``transport`` to it; returns the call id and the task serving the connection."""
        call_id = await self.service.create_call(channel=events.Channel.test, to_number=NUMBER,
                                                 from_number="+15550199", provider_call_id=provider_call_id)
        assert call_id is not None
        task = asyncio.create_task(self.service.serve(transport, transport.messages()))
        transport.push(Started(call_id=call_id, stream_id=transport.stream_id))
        await self.bus.wait_for(lambda: bool(self.events(events.CallAnswered, call_id=call_id)))
        return call_id, task

    def events(self, *types: type, call_id: str | None = None) -> list[Any]:
        return [e for e in self.bus.events(*types) if call_id is None or e.call_id == call_id]

    async def send_agent_audio(self, call_id: str, frames: list[AudioFrame]) -> None:
        for f in frames:
            await self.bus.publish_nowait(subjects.audio_out(call_id), f.pcm, f.headers())
