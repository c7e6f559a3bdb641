"""One live call on this ingress replica, whatever the caller's protocol.

Caller audio in, agent audio out at real-time pace, marks → the chunks the caller heard, clear on barge-in,
stale epochs dropped, DTMF, and the call's end. A pause (``PausePlayout``: media suspects a barge-in) stops what the
caller hears at once: agent audio is sent ``playout_lead_ms`` ahead, so the frames sent whose time has not come are
cleared at the caller's end and go back into the playout buffer; a ``ResumePlayout`` (a backchannel) plays them
again from where the caller stopped hearing, a ``BargeIn`` drops them with the rest of the reply (where the
transport's clear can drop audio sent: ``Transport.can_clear_queued``). The played-audio tap: every agent frame sent
to the caller is published on ``audio.played`` at its place on the call's clock (``callclock.py``), and a clear or
the call's end publishes a cut there, so what the caller heard (recordings) is known whatever the transport. The
session reaches its caller only through a ``Transport`` (``transports/base.py``) and knows no wire format; it
reaches the platform only through the bus ports.

Control commands (``control.*``) come on a per-call core subscription, so they reach the replica holding the caller
whichever it is. A hang-up or a transfer runs off that subscription's task (ending the call unsubscribes it, and
nats-py cancels a callback whose own subscription is removed at its next await), at once or, ``after_playout``, once
the agent's last words have played. A transfer is the transport's (``Transport.transfer``): while it is in flight
the call goes on; once the provider has taken it the call ends as ``transferred`` (the provider stopping the stream
meanwhile is part of it); a transport that cannot, or a provider that refuses, gives ``call.transfer_failed`` and the
call goes on.

Keys and holds (``control.send_dtmf``, ``control.hold``) are steps: they wait for the same playout, run in order
before a hang-up or transfer waiting with them, and never replace one. Keys go out through ``Transport.send_dtmf``
(``call.dtmf_sent`` says whether they did); the agent's next audio waits until their tones have played, and so does a
hang-up or transfer that came with them. On hold the caller hears the hold tone (``tones.HoldTone``) or silence while
the call's audio still reaches the platform; the hold ends (``call.hold_ended``) when agent audio of a new turn plays
("resumed": the caller spoke and was answered, a supervisor's decision was told) or at its ``max_s`` ("timeout").
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from opentelemetry import trace
from voice_runtime import metrics, telemetry
from voice_runtime.handlers import EnvelopeHandler, Message, RawHandler
from voice_runtime.logging import get_logger, safe_error
from voice_runtime.ports import Publisher, Unsubscribable
from voice_schemas import CallRecord, Envelope, events, make, subjects
from voice_schemas.audio import H_CUT, H_EPOCH, H_SEQ, H_TS, H_TURN, AudioFrame

from . import tones
from .callclock import CallClock
from .playout import Outgoing, PlayoutBuffer, TurnClosed
from .transports.base import (
    CallerAudio,
    CallerHungUp,
    DtmfPressed,
    Inbound,
    MarkPlayed,
    Started,
    TransferRefused,
    Transport,
)

log = get_logger(__name__)
_tracer = trace.get_tracer("voice.ingress")
SVC = "ingress"
FRAME_S = 0.020
HANGUP_PLAYOUT_LIMIT_S = 20.0  # a hang-up or transfer after playout waits at most this long for the last words
# the provider stops the stream while it carries out a transfer: the stream's end waits this long at most for the
# transfer's outcome (the transport's own request timeout, at most 60 s, ends it first)
TRANSFER_WAIT_LIMIT_S = 65.0
_STREAM_ENDS = frozenset({events.EndReason.caller_hangup, events.EndReason.connection_lost})
MAX_COMMANDS_RUNNING = 8  # hang-ups and transfers being carried out at once, per call
MAX_WAITING_STEPS = 4  # keys to press and holds waiting for playout, per call
# per-call bounds: marks in flight stay within the playout lead (a few); turns are remembered briefly
MAX_PENDING_MARKS = 256
MAX_REMEMBERED_TURNS = 16
# frames remembered after sending beyond the lead, for a pause to take back those the caller has not heard yet
SENT_KEPT_BEYOND_LEAD = 3
# per-frame counters, resolved once (50 frames/s per direction per call)
_FRAMES_IN = metrics.AUDIO_FRAMES.labels(SVC, "in", "ok")
_FRAMES_OUT = metrics.AUDIO_FRAMES.labels(SVC, "out", "ok")
_FRAMES_PLAYED = metrics.AUDIO_FRAMES.labels(SVC, "played", "ok")
_FRAMES_STALE = metrics.AUDIO_FRAMES.labels(SVC, "out", "stale")


class Clock(Protocol):
    """The time playout is paced by (seconds, monotonic); tests pass a virtual one."""

    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class LoopClock:
    """The event loop's monotonic clock."""

    def time(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Subscriber(Protocol):
    """Core subscriptions that log their own failures (``Service.on_raw`` / ``Service.on_events``)."""

    async def on_raw(self, subject: str, handler: RawHandler, *, per_call: bool = False) -> Unsubscribable: ...

    async def on_events(self, subject: str, handler: EnvelopeHandler, *,
                        per_call: bool = False) -> Unsubscribable: ...


@dataclass(frozen=True, slots=True)
class _Mark:
    turn_id: str
    epoch: int
    chunk: int | None  # None: the end of a turn given up before its final chunk (nothing more was heard)
    end_of_turn: bool


@dataclass(slots=True)
class _SentFrame:
    """A frame sent to the caller (None: a hold tone's), when it starts playing there, and the marks sent after
    it: what a pause needs to take it back."""

    out: Outgoing | None
    starts_at: float
    marks: list[str] = field(default_factory=list)


Command = Callable[[], Coroutine[Any, Any, Any]]  # a hang-up or transfer to carry out


@dataclass(slots=True)
class _AfterPlayout:
    """Commands waiting for the agent's last words to play: the turn to wait for (None: what is queued), the
    hang-up or transfer (a later one replaces it), and the steps (keys, a hold) that run before it, in order."""

    turn_id: str | None
    run: Command | None = None
    steps: list[Command] = field(default_factory=list)


@dataclass(slots=True)
class _Hold:
    """The caller is on hold until ``until`` (clock time) or until the agent speaks again."""

    started: float
    until: float
    tone: tones.HoldTone | None  # None: silence


class Recent(OrderedDict[str, Any]):
    """A dict that forgets its oldest entries beyond ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        while len(self) > self.limit:
            self.popitem(last=False)


class CallSession:
    """Owns one live call on this ingress replica."""

    def __init__(self, record: CallRecord, transport: Transport, *, bus: Publisher, subscriber: Subscriber,
                 lead_ms: int, gap_ms: int, on_closed: Callable[[CallSession], Awaitable[None]],
                 clock: Clock | None = None, caller_frames: Callable[[], int] = lambda: 1) -> None:
        self.record, self.transport, self.bus, self._subscriber = record, transport, bus, subscriber
        self.clock: Clock = clock or LoopClock()
        self.call_id, self.tenant_id = record.call_id, record.tenant_id
        self._audio_in = subjects.audio_in(self.call_id)  # built (and validated) once, used per frame
        self._audio_played = subjects.audio_played(self.call_id)
        self.lead_frames = max(0, lead_ms // 20)
        # frames handed to the transport at once (Twilio: one media message for them); the lead grows by the extra
        self.frames_per_send = max(1, transport.frames_per_message)
        self._on_closed = on_closed
        self.buffer = PlayoutBuffer(gap_s=gap_ms / 1000)
        self.seq_in = 0
        self.seq_played = 0
        # caller frames per audio.in message, asked per frame (the replica's load decides: ``caller_frames_for``)
        self._caller_frames = caller_frames
        self._in_pending: list[bytes] = []  # caller frames not published yet (fewer than one message's worth)
        self.call_clock = CallClock(self.clock.time())
        self.media_ms = 0
        self.paused = False
        self.ended = False
        self._counted = False  # counted in ACTIVE_CALLS
        self.end_reason: events.EndReason | None = None
        self.started_at = time.monotonic()
        self._wake = asyncio.Event()
        self._subs: list[Unsubscribable] = []
        self._sender: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        # held while a frame goes from the buffer to the caller (with its mark) and while a pause takes frames back
        self._play_lock = asyncio.Lock()
        self._sent: deque[_SentFrame] = deque(
            maxlen=self.lead_frames + self.frames_per_send + SENT_KEPT_BEYOND_LEAD)
        self._withdrawn: Recent = Recent(MAX_PENDING_MARKS)  # names of marks taken back: sent again renamed
        self._take_backs = 0
        self._marks: Recent = Recent(MAX_PENDING_MARKS)  # mark name -> _Mark, until it comes back
        self._heard: dict[str, list[int]] = {}  # turn -> chunk indices whose marks came back
        self._played: Recent = Recent(MAX_REMEMBERED_TURNS)  # turns whose final mark came back
        self._trace: Recent = Recent(MAX_REMEMBERED_TURNS)  # turn -> trace context of its first audio frame
        self._after_playout: _AfterPlayout | None = None  # commands waiting for the last words
        self._after_playout_timer: asyncio.Task[None] | None = None
        self._commands: set[asyncio.Task[Any]] = set()  # hang-ups and transfers being carried out
        self._transfer: asyncio.Task[Any] | None = None  # the transfer in flight (True: the provider took it)
        self._tones_until = 0.0  # clock time until which DTMF tones sent are playing (the agent's audio waits)
        self._hold: _Hold | None = None

    # ------------------------------------------------------------ setup / teardown
    async def open(self) -> None:
        """Follow the call on the bus, start playout, announce the call answered.

        When it fails or is cancelled, the owner calls ``end``, which frees whatever was set up. The call may also
        end while a step is in progress (a shutdown, a status callback): what that step sets up afterwards is
        freed at once, and the call is not announced.
        """
        if self.ended:
            return
        metrics.ACTIVE_CALLS.labels(SVC).inc()
        self._counted = True
        on = self._subscriber
        await self._follow(on.on_raw(subjects.audio_out(self.call_id), self._on_agent_audio, per_call=True))
        await self._follow(on.on_events(subjects.call_filter(self.call_id, "control", ">"), self._on_control,
                                        per_call=True))
        await self._follow(on.on_events(events.CallEnded.subject_for(self.call_id), self._on_call_ended,
                                        per_call=True))
        if self.ended:
            return
        self._sender = asyncio.create_task(self._playout_loop(), name=f"playout:{self.call_id}")
        await self._publish(events.CallAnswered(stream_id=self.transport.stream_id,
                                                media_format=self.transport.media_format,
                                                greet=self.record.greet_on_answer))

    async def _follow(self, subscribing: Awaitable[Unsubscribable]) -> None:
        sub = await subscribing
        if self.ended:  # ended while subscribing: end() has already released the others
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        else:
            self._subs.append(sub)

    async def end(self, reason: events.EndReason, detail: str | None = None, *, announce: bool = True) -> None:
        """End the call once: stop playout, unsubscribe, publish CallEnded, close the transport, free state."""
        if self.ended:
            return
        current = asyncio.current_task()
        transfer = self._transfer
        if reason in _STREAM_ENDS and transfer is not None and not transfer.done() and transfer is not current:
            # the provider stops the stream once it carries out the transfer, maybe before it has answered
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(transfer), TRANSFER_WAIT_LIMIT_S)
            if self.ended:
                return  # it did: the call ended as transferred
        self.ended, self.end_reason = True, reason
        self._hold = None
        with contextlib.suppress(Exception):  # the caller's last frames (a part message) are not held back
            await self._publish_caller_audio()
        if self._counted:
            metrics.ACTIVE_CALLS.labels(SVC).dec()
        await self._cut_played()  # audio still queued at the far end is not heard
        if self._after_playout_timer is not None and self._after_playout_timer is not current:
            self._after_playout_timer.cancel()
        for task in self._commands:
            if task is not current:
                task.cancel()
        if self._sender and self._sender is not current:
            self._sender.cancel()
        subs, self._subs = self._subs, []
        for s in subs:
            with contextlib.suppress(Exception):
                await s.unsubscribe()
        if announce:
            duration = round(time.monotonic() - self.started_at, 3)
            with contextlib.suppress(Exception):
                await self._publish(events.CallEnded(reason=reason, detail=detail, duration_s=duration),
                                    event_id=f"{self.call_id}-ended")
        log.info("call_ended", call_id=self.call_id, tenant_id=self.tenant_id, reason=reason.value)
        with contextlib.suppress(Exception):
            await self.transport.close(reason)
        await self._on_closed(self)

    # ------------------------------------------------------------ caller -> platform
    async def handle(self, event: Inbound) -> None:
        """One event the transport decoded (``Started`` is the service's, not the session's)."""
        if self.ended:
            return
        if isinstance(event, CallerAudio):
            await self._caller_audio(event.frames)
        elif isinstance(event, MarkPlayed):
            await self._mark_played(event.name)
        elif isinstance(event, DtmfPressed):
            await self._publish(events.DtmfReceived(digit=event.digit))
        elif isinstance(event, CallerHungUp):
            await self.end(events.EndReason.caller_hangup)
        elif isinstance(event, Started):
            raise ValueError("the call has started already")

    async def _caller_audio(self, frames: tuple[bytes, ...]) -> None:
        """Caller frames onto ``audio.in``: one message per ``caller_frames()`` frames (consecutive frames back to
        back, stamped as the last of them), so that a loaded replica sends, and media reads, fewer messages."""
        arrived_at = self.clock.time()
        per_message = self._caller_frames()
        for pcm in frames:
            self.seq_in += 1
            self.media_ms += 20
            self.call_clock.caller_frame(arrived_at, self.media_ms)
            self._in_pending.append(pcm)
            _FRAMES_IN.inc()
            if len(self._in_pending) >= per_message:
                await self._publish_caller_audio()

    async def _publish_caller_audio(self) -> None:
        pending, self._in_pending = self._in_pending, []
        if not pending:
            return
        pcm = pending[0] if len(pending) == 1 else b"".join(pending)
        frame = AudioFrame(pcm=pcm, seq=self.seq_in, epoch=self.buffer.epoch, ts_ms=self.media_ms)
        await self.bus.publish_nowait(self._audio_in, pcm, frame.headers())

    async def _mark_played(self, name: str) -> None:
        mark = self._marks.pop(name, None)
        if mark is None:
            return  # cleared by a barge-in (the caller did not hear it), or never ours
        if mark.chunk is not None:
            self._heard.setdefault(mark.turn_id, []).append(mark.chunk)
            await self._publish(events.PlayoutMarked(chunk=mark.chunk), turn_id=mark.turn_id, epoch=mark.epoch)
        if mark.end_of_turn:
            await self._turn_played(mark.turn_id, mark.epoch)

    async def _turn_played(self, turn_id: str, epoch: int) -> None:
        """All of the turn that will ever play has played (or it was given up before any of it played)."""
        self._played[turn_id] = True
        await self._publish(events.PlayoutFinished(cleared=False, heard_chunks=self._heard.pop(turn_id, [])),
                            turn_id=turn_id, epoch=epoch)
        waiting = self._after_playout
        if waiting is not None and not self.buffer.pending() and waiting.turn_id in (None, turn_id):
            self._after_playout = None
            timer, self._after_playout_timer = self._after_playout_timer, None
            if timer is not None and timer is not asyncio.current_task():
                timer.cancel()
            await self._carry_out(waiting)

    # ------------------------------------------------------------ platform -> caller
    async def _on_agent_audio(self, msg: Message) -> None:
        """A message of agent audio: one frame, or several of one chunk (``AudioFrame.split``)."""
        frame = AudioFrame.from_message(msg.data, msg.headers)
        now, added = self.clock.time(), False
        for f in frame.split():
            if self.buffer.add(f, now):
                added = True
            else:
                _FRAMES_STALE.inc()
        if added:
            if frame.turn_id and msg.headers and "traceparent" in msg.headers \
                    and frame.turn_id not in self._trace:
                self._trace[frame.turn_id] = telemetry.extract(msg.headers)
            self._wake.set()

    async def _on_control(self, env: Envelope[Any]) -> None:
        data = env.data
        if isinstance(data, events.PausePlayout):
            self.paused = True
            await self._take_back()
        elif isinstance(data, events.ResumePlayout):
            self.paused = False
            self.buffer.resume(self.clock.time())
            self._wake.set()
        elif isinstance(data, events.BargeIn):
            await self._barge_in(env.epoch)
        elif isinstance(data, events.HangUp):
            self._when_played(env.turn_id, data.after_playout, functools.partial(self.end, data.reason))
        elif isinstance(data, events.Transfer):
            if self._transfer is not None and not self._transfer.done():
                await self._transfer_failed(data, "a transfer of this call is already in progress")
            else:
                self._when_played(env.turn_id, data.after_playout, functools.partial(self._start_transfer, data))
        elif isinstance(data, events.SendDtmf):
            self._when_played(env.turn_id, data.after_playout, functools.partial(self._send_dtmf, data), step=True)
        elif isinstance(data, events.Hold):
            self._when_played(env.turn_id, data.after_playout, functools.partial(self._start_hold, data), step=True)

    async def _on_call_ended(self, env: Envelope[Any]) -> None:
        # ended elsewhere (a status callback on another replica): that replica announced it. Off this
        # subscription's task, as a hang-up: end() unsubscribes it
        if not self.ended:
            self._run_command(functools.partial(self.end, events.EndReason.status_callback, announce=False),
                              always=True)

    # ------------------------------------------------------------ hang-ups and transfers
    def _when_played(self, turn_id: str | None, after_playout: bool, run: Command, *, step: bool = False) -> None:
        """Run a command now, or, ``after_playout``, once the turn ``turn_id`` (the agent's last words, maybe
        still in synthesis) and everything queued have played, within ``HANGUP_PLAYOUT_LIMIT_S``. A later hang-up
        or transfer replaces one still waiting; a ``step`` (keys, a hold) joins the steps that run before it."""
        waiting_for = turn_id if turn_id and turn_id not in self._played else None
        if after_playout and (waiting_for or self.buffer.pending()):
            waiting = self._after_playout
            if waiting is None:
                waiting = self._after_playout = _AfterPlayout(waiting_for)
            waiting.turn_id = waiting_for
            if not step:
                waiting.run = run
            elif len(waiting.steps) < MAX_WAITING_STEPS:
                waiting.steps.append(run)
            else:
                log.warning("call_steps_dropped", call_id=self.call_id, waiting=len(waiting.steps))
            if self._after_playout_timer is None:
                self._after_playout_timer = asyncio.create_task(self._after_playout_limit(),
                                                                name=f"after-playout:{self.call_id}")
        else:
            self._run_command(run)

    async def _after_playout_limit(self) -> None:
        await asyncio.sleep(HANGUP_PLAYOUT_LIMIT_S)
        self._after_playout_timer = None
        waiting, self._after_playout = self._after_playout, None
        if waiting is not None and not self.ended:
            await self._carry_out(waiting)

    async def _carry_out(self, waiting: _AfterPlayout) -> None:
        """What waited for playout: a lone hang-up or transfer at once (as it always has); steps in a task of their
        own (keys take time to send), in order, then the hang-up or transfer once their tones have played."""
        if not waiting.steps:
            if waiting.run is not None:
                await waiting.run()
            return
        self._run_command(functools.partial(self._in_order, waiting), always=True)

    async def _in_order(self, waiting: _AfterPlayout) -> None:
        for step in waiting.steps:
            await step()
        if waiting.run is not None and not self.ended:
            left = self._tones_until - self.clock.time()
            if left > 0:
                await self.clock.sleep(left)
            await waiting.run()

    # ------------------------------------------------------------ keys and holds
    async def _send_dtmf(self, cmd: events.SendDtmf) -> None:
        """Press the keys through the transport, in order behind the audio sent; ``call.dtmf_sent`` either way."""
        if self.ended:
            return
        try:
            digits = tones.check_digits(cmd.digits)
            started = self.clock.time()
            async with self._send_lock:
                if self.ended:
                    return
                await self.transport.send_dtmf(digits)
        except NotImplementedError as e:
            reason = str(e) or "this kind of call cannot send DTMF"
        except tones.BadDigits as e:
            reason = str(e)
        except Exception as e:
            metrics.ERRORS.labels(SVC, "dtmf").inc()
            reason = f"the keys could not be sent: {safe_error(e, 200)}"
        else:
            self._tones_until = max(self._tones_until, started + tones.duration_s(digits))
            log.info("dtmf_sent", call_id=self.call_id, tenant_id=self.tenant_id, keys=len(digits),
                     requested_by=cmd.requested_by)  # never the keys themselves (a PIN, an account number)
            with contextlib.suppress(Exception):
                await self._publish(events.DtmfSent(ok=True, keys=len(digits), requested_by=cmd.requested_by))
            return
        log.info("dtmf_failed", call_id=self.call_id, tenant_id=self.tenant_id, reason=reason[:300])
        with contextlib.suppress(Exception):
            await self._publish(events.DtmfSent(ok=False, keys=0, reason=reason[:300], requested_by=cmd.requested_by))

    async def _start_hold(self, cmd: events.Hold) -> None:
        if self.ended:
            return
        now = self.clock.time()
        self._hold = _Hold(started=now, until=now + cmd.max_s,
                           tone=tones.HoldTone() if cmd.audio == "tone" else None)
        log.info("hold_started", call_id=self.call_id, tenant_id=self.tenant_id, max_s=cmd.max_s, audio=cmd.audio)
        self._wake.set()

    async def _end_hold(self, reason: Literal["resumed", "timeout"]) -> None:
        hold, self._hold = self._hold, None
        if hold is None:
            return
        held_s = round(self.clock.time() - hold.started, 3)
        log.info("hold_ended", call_id=self.call_id, tenant_id=self.tenant_id, reason=reason, held_s=held_s)
        await self._publish(events.HoldEnded(reason=reason, held_s=held_s))

    async def _play_hold(self, starts_at: float) -> None:
        """One frame of the hold tone, paced and reported played like the agent's audio."""
        assert self._hold is not None and self._hold.tone is not None
        pcm = self._hold.tone.next_frame()
        if await self._to_caller(self.transport.play, pcm):
            self._sent.append(_SentFrame(None, starts_at))
            await self._tap_played([AudioFrame(pcm=pcm, seq=0, epoch=self.buffer.epoch)], starts_at)

    def _run_command(self, run: Command, *, always: bool = False) -> asyncio.Task[Any] | None:
        """Carry out a command in a task of its own (bounded per call, unless ``always``)."""
        if self.ended:
            return None
        if len(self._commands) >= MAX_COMMANDS_RUNNING and not always:
            log.warning("call_commands_dropped", call_id=self.call_id, running=len(self._commands))
            return None
        task = asyncio.create_task(run(), name=f"command:{self.call_id}")
        self._commands.add(task)
        task.add_done_callback(self._commands.discard)
        return task

    async def _start_transfer(self, cmd: events.Transfer) -> None:
        if self.ended:
            return
        if self._transfer is not None and not self._transfer.done():
            await self._transfer_failed(cmd, "a transfer of this call is already in progress")
            return
        self._transfer = self._run_command(functools.partial(self._carry_out_transfer, cmd))

    async def _carry_out_transfer(self, cmd: events.Transfer) -> bool:
        """The transport hands the caller over (True, and the call ends as transferred), or says why not."""
        log.info("transfer_started", call_id=self.call_id, tenant_id=self.tenant_id, requested_by=cmd.requested_by,
                 channel=self.transport.channel.value)
        try:
            await self.transport.transfer(cmd.target)
        except TransferRefused as e:
            reason = str(e)
        except Exception as e:
            metrics.ERRORS.labels(SVC, "transfer").inc()
            reason = f"the transfer failed: {safe_error(e, 200)}"
        else:
            log.info("call_transferred", call_id=self.call_id, tenant_id=self.tenant_id)
            await self.end(events.EndReason.transferred)
            return True
        if not self.ended:
            await self._transfer_failed(cmd, reason)
        return False

    async def _transfer_failed(self, cmd: events.Transfer, reason: str) -> None:
        log.info("transfer_failed", call_id=self.call_id, tenant_id=self.tenant_id, reason=reason[:300],
                 requested_by=cmd.requested_by)
        with contextlib.suppress(Exception):
            await self._publish(events.TransferFailed(reason=reason[:300], requested_by=cmd.requested_by))

    async def _barge_in(self, new_epoch: int) -> None:
        """Drop the older epochs' audio, queued here and at the far end; each turn cut off reports what was heard.
        Audio of ``new_epoch`` that arrived before the barge-in stays."""
        cut = self.buffer.clear(new_epoch)
        self.paused = False
        # turns sent in full whose audio is still playing at the far end are cut off too; their marks (and those
        # of the dropped turns) no longer count
        for name, mark in list(self._marks.items()):
            if mark.epoch < self.buffer.epoch:
                del self._marks[name]
                if (mark.turn_id, mark.epoch) not in cut:
                    cut.append((mark.turn_id, mark.epoch))
        if cut:
            await self._to_caller(self.transport.clear)
            self._sent.clear()  # nothing sent before the clear plays any more
            await self._cut_played()
        for turn_id, epoch in cut:
            await self._publish(
                events.PlayoutFinished(cleared=True, heard_chunks=self._heard.pop(turn_id, [])),
                turn_id=turn_id, epoch=epoch,
            )

    async def _playout_loop(self) -> None:
        """Send agent audio at real-time pace, `lead_frames` ahead, with marks after each chunk. A frame is taken
        from the buffer only when it is due, so a pause, clear or end that came during the wait applies to it.
        Where the transport carries ``frames_per_send`` frames per message, the frames of a chunk due within
        that many frames of the lead go in one send (the loop then wakes once per send, not per frame)."""
        deadline: float | None = None  # when the next frame starts playing at the caller (clock time)
        clock = self.clock
        lead_s = self.lead_frames * FRAME_S
        batch_lead_s = lead_s + (self.frames_per_send - 1) * FRAME_S
        while not self.ended:
            now = clock.time()
            if deadline is None or deadline < now:
                deadline = now  # the caller's buffer ran dry: restart the lead
            if not self.paused and deadline - now > lead_s + 1e-6:  # (a microsecond: float sums never loop here)
                await clock.sleep(deadline - now - lead_s)
                continue
            if self._tones_until > now and not self.paused and self.buffer.pending():
                await clock.sleep(min(self._tones_until - now, 0.1))  # keys are being pressed: the agent waits
                continue
            out = None if self.paused else self.buffer.next(now)
            if isinstance(out, TurnClosed):
                await self._give_up(out)
                continue
            hold = self._hold
            if out is None and hold is not None and not self.paused:
                try:
                    if now >= hold.until:
                        await self._end_hold("timeout")
                        continue
                    if hold.tone is not None:
                        async with self._play_lock:
                            if not self.paused:
                                await self._play_hold(deadline)
                        deadline += FRAME_S
                        continue
                except Exception as e:  # as below: a hold event not published must not stop the caller's audio
                    metrics.ERRORS.labels(SVC, "playout").inc()
                    log.warning("playout_event_failed", call_id=self.call_id, error=safe_error(e, 200))
                    continue
            if out is None:
                if self.buffer.pending() and not self.paused:
                    metrics.AUDIO_FRAMES.labels(SVC, "out", "underrun").inc()
                self._wake.clear()
                give_up_at = None if self.paused else self.buffer.wake_at()
                if hold is not None and not self.paused:
                    give_up_at = hold.until if give_up_at is None else min(give_up_at, hold.until)
                timeout = None if give_up_at is None else max(0.0, give_up_at - clock.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            batch = [out]
            try:
                if hold is not None:  # the agent speaks again
                    await self._end_hold("resumed")
                async with self._play_lock:
                    if self.paused:  # a pause came after this frame was taken: it goes back, in front
                        self.buffer.put_back([out], clock.time())
                        continue
                    while (len(batch) < self.frames_per_send and not batch[-1].end_of_chunk
                           and deadline + len(batch) * FRAME_S - now <= batch_lead_s + 1e-6 and self.buffer.ready()):
                        more = self.buffer.next(now)
                        assert isinstance(more, Outgoing)  # (ready: a frame of the same turn)
                        batch.append(more)
                    await self._play(batch, deadline)
            except Exception as e:  # a playout event not published must not stop the caller's audio
                metrics.ERRORS.labels(SVC, "playout").inc()
                log.warning("playout_event_failed", call_id=self.call_id, error=safe_error(e, 200))
            deadline += FRAME_S * len(batch)

    async def _give_up(self, closed: TurnClosed) -> None:
        """A turn that stopped arriving or was superseded: it ends once what was sent of it has played."""
        if not closed.superseded:
            metrics.ERRORS.labels(SVC, "playout_gap").inc()
        log.info("playout_turn_closed", call_id=self.call_id, turn_id=closed.turn_id, epoch=closed.epoch,
                 superseded=closed.superseded)
        try:
            if closed.started:
                async with self._play_lock:
                    if not self.buffer.holds(closed.turn_id, closed.epoch):  # (a pause took its end back)
                        await self._send_mark(f"{closed.turn_id}:{closed.epoch}:end",
                                              _Mark(closed.turn_id, closed.epoch, None, True))
            else:
                await self._turn_played(closed.turn_id, closed.epoch)
        except Exception as e:  # as in _playout_loop: a playout event not published must not stop the audio
            metrics.ERRORS.labels(SVC, "playout").inc()
            log.warning("playout_event_failed", call_id=self.call_id, error=safe_error(e, 200))

    async def _play(self, batch: list[Outgoing], starts_at: float) -> None:
        """Send consecutive frames of one chunk, the first starting to play at the caller at ``starts_at`` (clock
        time); ``_play_lock`` held. Only the first can begin the turn, only the last end the chunk."""
        first, last = batch[0], batch[-1]
        f = first.frame
        if f.epoch < self.buffer.epoch:
            return  # cleared while this frame waited for its time
        if await self._to_caller(self.transport.play_frames, [o.frame.pcm for o in batch],
                                 end_of_reply=last.end_of_turn):
            for i, o in enumerate(batch):
                self._sent.append(_SentFrame(o, starts_at + i * FRAME_S))
            await self._tap_played([o.frame for o in batch], starts_at)
        _FRAMES_OUT.inc(len(batch))
        if first.first_of_turn and f.turn_id is not None:
            # the turn's last hop: first agent audio sent to the caller, in the turn's trace
            ctx = self._trace.pop(f.turn_id, None)
            with _tracer.start_as_current_span("ingress first_audio", context=ctx, attributes={
                "call_id": self.call_id, "tenant_id": self.tenant_id, "turn_id": f.turn_id,
                "agent_id": self.record.agent_id, "agent_version": self.record.agent_version,
            }):
                await self._publish(events.PlayoutStarted(first_audio_wall_ms=time.time() * 1000,
                                                          tts_first_audio_ms=f.synth_ms),
                                    turn_id=f.turn_id, epoch=f.epoch)
        f = last.frame
        if last.end_of_chunk and f.turn_id is not None and f.chunk is not None:
            await self._send_mark(f"{f.turn_id}:{f.epoch}:{f.chunk}" + (":f" if last.end_of_turn else ""),
                                  _Mark(f.turn_id, f.epoch, f.chunk, last.end_of_turn))

    async def _send_mark(self, name: str, mark: _Mark) -> None:
        """A mark after the audio sent so far. One sent again after a pause took it back is renamed (``:r<n>``):
        Twilio echoes the marks it drops on a clear, and that late echo must not count as the new one played.
        Nothing parses mark names; they only have to be unique among the marks in flight."""
        if name in self._withdrawn:
            name = f"{name}:r{self._take_backs}"
        self._marks[name] = mark
        if self._sent:
            self._sent[-1].marks.append(name)
        await self._to_caller(self.transport.mark, name)

    async def _take_back(self) -> None:
        """A pause: the caller stops hearing the agent now, not ``playout_lead_ms`` later. The frames sent whose
        time has not come yet are cleared at the caller's end (``Transport.clear``) and go back in front of the
        playout buffer, with the marks sent after them withdrawn, so that a resume plays them again from where
        the caller stopped hearing and a barge-in drops them with the rest of the reply.

        Only where the transport's clear drops audio sent but not played (``Transport.can_clear_queued``): where
        it cannot, the caller would hear those frames twice, so a pause only stops sending (as before). Not while
        keys are being pressed either: their tones are queued with the audio, and a clear would cut them."""
        async with self._play_lock:
            now = self.clock.time()
            if self.ended or not self.paused or not self.transport.can_clear_queued or self._tones_until > now:
                return
            unplayed = 0
            for sent in reversed(self._sent):  # the frames whose time at the caller has not come
                if sent.starts_at <= now or any(name not in self._marks for name in sent.marks):
                    break  # (a mark after it came back: it has played, whatever the estimate says)
                unplayed += 1
            if not unplayed:
                return
            dropped: list[int | None] = []

            async def clear() -> None:
                dropped.append(await self.transport.clear())

            if not await self._to_caller(clear):
                return
            # a transport whose queue is its own knows exactly how much it dropped; the far end's is estimated
            n = unplayed if dropped[0] is None else dropped[0]
            taken = [self._sent.pop() for _ in range(min(n, len(self._sent)))][::-1]
            self._sent.clear()  # what was sent before them has played
            if n > len(taken):  # the sender's queue held more than the lead: the oldest of it is lost
                log.warning("playout_take_back_short", call_id=self.call_id, dropped=n, taken_back=len(taken))
            if not taken:
                return
            self._take_backs += 1
            for sent in taken:
                for name in sent.marks:
                    if self._marks.pop(name, None) is not None:
                        self._withdrawn[name] = None
            frames = self.buffer.put_back([s.out for s in taken if s.out is not None], now)
            log.info("playout_taken_back", call_id=self.call_id, frames=frames)
            await self._cut_played()

    # ------------------------------------------------------------ the played-audio tap
    async def _tap_played(self, frames: list[AudioFrame], starts_at: float) -> None:
        """Report consecutive frames of one turn sent to the caller (one message, their audio back to back), at
        their end on the call's clock (as ``audio.in`` stamps its frames)."""
        self.seq_played += 1
        f = frames[0]
        h = {H_SEQ: str(self.seq_played), H_EPOCH: str(f.epoch),
             H_TS: str(self.call_clock.media_ms(starts_at + len(frames) * FRAME_S))}
        if f.turn_id is not None:
            h[H_TURN] = f.turn_id
        await self.bus.publish_nowait(self._audio_played, f.pcm if len(frames) == 1 else
                                      b"".join(x.pcm for x in frames), h)
        _FRAMES_PLAYED.inc(len(frames))

    async def _cut_played(self) -> None:
        """Nothing reported played after now was heard (the far end's queue was cleared, or the call is over)."""
        if self.seq_played == 0:
            return
        self.seq_played += 1
        h = {H_SEQ: str(self.seq_played), H_EPOCH: str(self.buffer.epoch),
             H_TS: str(self.call_clock.media_ms(self.clock.time())), H_CUT: "1"}
        with contextlib.suppress(Exception):  # the tap never stops the call
            await self.bus.publish_nowait(self._audio_played, b"", h)

    # ------------------------------------------------------------ helpers
    async def _to_caller(self, send: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> bool:
        """One outbound transport call at a time; a failed send stops playout (the inbound side ends the call).
        True when it was sent."""
        if self.ended:
            return False
        async with self._send_lock:
            try:
                await send(*args, **kwargs)
            except Exception as e:
                if not self.paused:
                    log.info("transport_send_failed", call_id=self.call_id, error=safe_error(e, 200))
                self.paused = True
                return False
        return True

    async def _publish(self, data: Any, *, turn_id: str | None = None, epoch: int | None = None,
                       event_id: str | None = None) -> None:
        env = make(data, tenant_id=self.tenant_id, call_id=self.call_id, turn_id=turn_id,
                   epoch=self.buffer.epoch if epoch is None else epoch, event_id=event_id)
        await self.bus.publish(env)
