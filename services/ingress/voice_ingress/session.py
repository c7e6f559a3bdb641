"""One Twilio Media Streams call: caller audio in, paced agent audio out, marks, clear, end."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry import trace
from voice_runtime import metrics, telemetry
from voice_runtime.bus import Bus
from voice_runtime.logging import get_logger
from voice_schemas import CallRecord, events, make, parse, subjects
from voice_schemas.audio import AudioFrame

from .codec import AgentAudioEncoder, CallerAudioDecoder
from .playout import Outgoing, PlayoutBuffer

log = get_logger(__name__)
_tracer = trace.get_tracer("voice.ingress")
SVC = "ingress"
FRAME_S = 0.020
HANGUP_PLAYOUT_LIMIT_S = 20.0  # an agent hang-up waits at most this long for its goodbye to play

SendJson = Callable[[dict[str, Any]], Awaitable[None]]


class CallSession:
    """Owns one live call on this ingress replica."""

    def __init__(self, bus: Bus, record: CallRecord, stream_sid: str, send: SendJson, lead_ms: int,
                 on_closed: Callable[[CallSession], Awaitable[None]]) -> None:
        self.bus, self.record, self.stream_sid, self._send = bus, record, stream_sid, send
        self.call_id, self.tenant_id = record.call_id, record.tenant_id
        self.lead_frames = max(0, lead_ms // 20)
        self._on_closed = on_closed
        self.decoder = CallerAudioDecoder()
        self.encoder = AgentAudioEncoder()
        self.buffer = PlayoutBuffer()
        self.seq_in = 0
        self.media_ms = 0
        self.paused = False
        self.hangup_pending = False
        self.ended = False
        self.started_at = time.monotonic()
        self._wake = asyncio.Event()
        self._subs: list[Subscription] = []
        self._sender: asyncio.Task[None] | None = None
        self._heard: dict[str, list[int]] = {}  # turn -> chunk indices whose marks came back
        self._final_marks: set[str] = set()
        self._send_lock = asyncio.Lock()
        self._trace: dict[str, Any] = {}
        self._played: set[str] = set()  # turns whose final mark came back
        self._hangup_turn: str | None = None
        self._hangup_timer: asyncio.TimerHandle | None = None  # turn -> trace context carried by its first audio frame

    # ------------------------------------------------------------ setup / teardown
    async def open(self) -> None:
        nc = self.bus.nc
        self._subs = [
            await nc.subscribe(subjects.audio_out(self.call_id), cb=self._on_audio),
            await nc.subscribe(subjects.call_filter(self.call_id, "control", ">"), cb=self._on_control),
            await nc.subscribe(events.CallEnded.subject_for(self.call_id), cb=self._on_ended),
        ]
        self._sender = asyncio.create_task(self._playout_loop(), name=f"playout:{self.call_id}")
        metrics.ACTIVE_CALLS.labels(SVC).inc()
        await self._publish(events.CallAnswered(stream_id=self.stream_sid))

    async def end(self, reason: events.EndReason, detail: str | None = None, *, announce: bool = True) -> None:
        """End the call once: stop playout, unsubscribe, publish CallEnded, free state."""
        if self.ended:
            return
        self.ended = True
        metrics.ACTIVE_CALLS.labels(SVC).dec()
        if self._hangup_timer is not None:
            self._hangup_timer.cancel()
        for s in self._subs:
            with contextlib.suppress(Exception):
                await s.unsubscribe()
        if self._sender and self._sender is not asyncio.current_task():
            self._sender.cancel()
        if announce:
            duration = round(time.monotonic() - self.started_at, 3)
            with contextlib.suppress(Exception):
                await self._publish(events.CallEnded(reason=reason, detail=detail, duration_s=duration),
                                    event_id=f"{self.call_id}-ended")
        log.info("call_ended", call_id=self.call_id, tenant_id=self.tenant_id, reason=reason.value)
        await self._on_closed(self)

    # ------------------------------------------------------------ caller -> platform
    async def on_media(self, payload_b64: str) -> None:
        ulaw = base64.b64decode(payload_b64, validate=True)
        for pcm in self.decoder.decode(ulaw):
            self.seq_in += 1
            self.media_ms += 20
            frame = AudioFrame(pcm=pcm, seq=self.seq_in, epoch=self.buffer.epoch, ts_ms=self.media_ms)
            await self.bus.publish_nowait(subjects.audio_in(self.call_id), pcm, frame.headers())
            metrics.AUDIO_FRAMES.labels(SVC, "in", "ok").inc()

    async def on_dtmf(self, digit: str) -> None:
        await self._publish(events.DtmfReceived(digit=digit))

    async def on_mark(self, name: str) -> None:
        # mark names: "<turn_id>:<epoch>:<chunk>[:f]"
        parts = name.split(":")
        if len(parts) < 3:
            return
        turn_id, epoch, chunk = parts[0], int(parts[1]), int(parts[2])
        if epoch < self.buffer.epoch:
            return  # cleared by a barge-in: the caller did not hear it
        self._heard.setdefault(turn_id, []).append(chunk)
        await self._publish(events.PlayoutMarked(chunk=chunk), turn_id=turn_id, epoch=epoch)
        if len(parts) > 3 and parts[3] == "f":
            self._played.add(turn_id)
            await self._publish(events.PlayoutFinished(cleared=False, heard_chunks=self._heard.pop(turn_id, [])),
                                turn_id=turn_id, epoch=epoch)
            if self.hangup_pending and not self.buffer.pending() and self._hangup_turn in (None, turn_id):
                await self.end(events.EndReason.agent_hangup)

    # ------------------------------------------------------------ platform -> caller
    async def _on_audio(self, msg: Msg) -> None:
        frame = AudioFrame.from_message(msg.data, msg.headers)
        if self.buffer.add(frame):
            if frame.turn_id and msg.headers and "traceparent" in msg.headers:
                self._trace.setdefault(frame.turn_id, telemetry.extract(msg.headers))
            self._wake.set()
        else:
            metrics.AUDIO_FRAMES.labels(SVC, "out", "stale").inc()

    async def _on_control(self, msg: Msg) -> None:
        try:
            env = parse(msg.data)
        except Exception:
            metrics.ERRORS.labels(SVC, "bad_control").inc()
            return
        data = env.data
        if isinstance(data, events.PausePlayout):
            self.paused = True
        elif isinstance(data, events.ResumePlayout):
            self.paused = False
            self._wake.set()
        elif isinstance(data, events.BargeIn):
            await self._barge_in(env.epoch)
        elif isinstance(data, events.HangUp):
            # after_playout: the goodbye may still be in synthesis; wait for that turn's final mark
            waiting_for = env.turn_id if env.turn_id and env.turn_id not in self._played else None
            if data.after_playout and (waiting_for or self.buffer.pending()):
                self.hangup_pending = True
                self._hangup_turn = waiting_for
                self._hangup_timer = asyncio.get_running_loop().call_later(
                    HANGUP_PLAYOUT_LIMIT_S, lambda: asyncio.ensure_future(self.end(data.reason)))
            else:
                await self.end(data.reason)

    async def _on_ended(self, msg: Msg) -> None:
        await self.end(events.EndReason.status_callback, announce=False)

    async def _barge_in(self, new_epoch: int) -> None:
        current = self.buffer.current_turn()
        self.buffer.clear(new_epoch)
        self.paused = False
        self.encoder.reset()
        await self._send_json({"event": "clear", "streamSid": self.stream_sid})
        if current is not None:
            turn_id, epoch = current
            await self._publish(
                events.PlayoutFinished(cleared=True, heard_chunks=self._heard.pop(turn_id, [])),
                turn_id=turn_id, epoch=epoch,
            )

    async def _playout_loop(self) -> None:
        """Send agent audio at real-time pace, `lead_frames` ahead, with marks after each chunk."""
        deadline: float | None = None  # monotonic time the next frame starts playing at the caller
        loop = asyncio.get_running_loop()
        while not self.ended:
            out = None if self.paused else self.buffer.next()
            if out is None:
                if deadline is not None and self.buffer.pending() and not self.paused:
                    metrics.AUDIO_FRAMES.labels(SVC, "out", "underrun").inc()
                self._wake.clear()
                await self._wake.wait()
                now = loop.time()
                if deadline is None or deadline < now:
                    deadline = now  # the caller's buffer ran dry: restart the lead
                continue
            now = loop.time()
            if deadline is None or deadline < now:
                deadline = now
            ahead = deadline - now
            if ahead > self.lead_frames * FRAME_S:
                await asyncio.sleep(ahead - self.lead_frames * FRAME_S)
            await self._send_frame(out)
            deadline += FRAME_S

    async def _send_frame(self, out: Outgoing) -> None:
        f = out.frame
        payloads = self.encoder.encode(f.pcm)
        if out.end_of_chunk:
            payloads += self.encoder.flush() if out.end_of_turn else []
        for p in payloads:
            await self._send_json({"event": "media", "streamSid": self.stream_sid,
                                   "media": {"payload": base64.b64encode(p).decode()}})
            metrics.AUDIO_FRAMES.labels(SVC, "out", "ok").inc()
        if out.first_of_turn and f.turn_id is not None:
            # the turn's last hop: first agent audio sent to the caller, in the turn's trace
            ctx = self._trace.pop(f.turn_id, None)
            with _tracer.start_as_current_span("ingress first_audio", context=ctx, attributes={
                "call_id": self.call_id, "tenant_id": self.tenant_id, "turn_id": f.turn_id,
                "agent_id": self.record.agent_id, "agent_version": self.record.agent_version,
            }):
                await self._publish(events.PlayoutStarted(first_audio_wall_ms=time.time() * 1000),
                                    turn_id=f.turn_id, epoch=f.epoch)
        if out.end_of_chunk:
            name = f"{f.turn_id}:{f.epoch}:{f.chunk}" + (":f" if out.end_of_turn else "")
            await self._send_json({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    # ------------------------------------------------------------ helpers
    async def _send_json(self, obj: dict[str, Any]) -> None:
        if self.ended:
            return
        async with self._send_lock:
            try:
                await self._send(obj)
            except Exception:
                self.paused = True

    async def _publish(self, data: Any, *, turn_id: str | None = None, epoch: int | None = None,
                       event_id: str | None = None) -> None:
        env = make(data, tenant_id=self.tenant_id, call_id=self.call_id, turn_id=turn_id,
                   epoch=self.buffer.epoch if epoch is None else epoch, event_id=event_id)
        await self.bus.publish(env)


def parse_twilio(raw: str | bytes, limit: int) -> dict[str, Any]:
    """Parse one Media Streams message; ValueError with a reason for anything malformed."""
    if len(raw) > limit:
        raise ValueError("message too large")
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError("malformed JSON") from e
    if not isinstance(obj, dict) or not isinstance(obj.get("event"), str):
        raise ValueError("message has no event")
    return obj
