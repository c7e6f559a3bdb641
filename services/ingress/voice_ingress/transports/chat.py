"""Text chat: a call whose user types and reads (channel ``chat``). No audio, no media, stt or tts stage.

control-api starts a chat for a signed-in user or an API key and relays its messages over core NATS
request/reply (``voice_schemas.chat``): every replica serves ``ingress.rpc.chat.open`` in one queue group, and the
replica that opened a chat alone serves ``ingress.rpc.chat.<call_id>.say`` and ``.end`` until the chat ends (then
nobody answers them).

On the bus a chat is a call like any other: ``CallStarted`` (channel chat), ``CallAnswered``, ``CallEnded`` with its
reason, and each user message is the ``TranscriptFinalized`` stt publishes for a spoken turn, so brain answers it
unchanged. media does not claim a chat and tts does not synthesise its replies (``ReplyChunk.text_only``); with no
playout to say what was heard, brain completes a chat turn once the reply's final chunk is sent, and that turn's
``TurnCompleted`` (the whole reply) is what the user gets back here and what analytics stores.

Grants: ``open`` carries a call token (``voice_runtime.calltoken``, channel chat) control-api minted for the agent;
its id is claimed in KV ``calls`` (``g.<jti>``, create-only), so one token opens one chat on whichever replica.
Bounds: at most ``chat_max_sessions`` chats per replica; per chat one message at a time (another is refused as
busy) and a few turn ids; a chat idle for ``chat_idle_timeout_s`` ends (reason ``timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from prometheus_client import Counter, Gauge
from pydantic import Field, ValidationError
from voice_runtime import calltoken, metrics
from voice_runtime.agents import AgentDirectory
from voice_runtime.handlers import EnvelopeHandler, Message, RawHandler, catching
from voice_runtime.logging import get_logger, safe_error
from voice_runtime.ports import BusPort, Unsubscribable
from voice_runtime.settings import _Settings
from voice_schemas import CallRecord, Envelope, events, make, subjects
from voice_schemas import chat as rpc
from voice_schemas.chat import ChatAnswer, ChatError
from voice_schemas.streams import KV_CALLS

from ..session import Recent
from .base import CallDesk, Endpoint

log = get_logger(__name__)
SVC = "ingress"
QUEUE_GROUP = "ingress-chat"
MEDIA_FORMAT = "text/plain"
MAX_REMEMBERED_TURNS = 16  # turn ids a chat keeps (sent and not yet answered, or hanging up after)
MAX_REQUEST_BYTES = 16 * 1024  # a request body (the longest message is 2,000 characters)
GREETING = "greeting"  # the turn id brain gives the agent's first message
CANNOT_TRANSFER = "transport cannot transfer"
CANNOT_DTMF = "a text chat cannot send DTMF"

ACTIVE = Gauge("voice_ingress_chats_active", "Text chats this replica holds")
REQUESTS = Counter("voice_ingress_chat_requests_total", "Chat requests by operation and outcome",
                   ["op", "outcome"])


class ChatSettings(_Settings):
    """Text chat limits of ingress."""

    chat_idle_timeout_s: float = Field(
        300.0, gt=0, le=86_400, description="A chat with no message for this long ends (reason timeout)"
    )
    chat_max_sessions: int = Field(1000, ge=0, description="Chats one replica holds at once; more are refused")


class ChatDesk(CallDesk, Protocol):
    """What the chat endpoint needs of the ingress service (``IngressService`` provides it)."""

    bus: BusPort | None
    kv: dict[str, Any]
    directory: AgentDirectory | None

    async def create_call(self, *, channel: events.Channel, to_number: str, from_number: str | None,
                          provider_call_id: str | None, agent_id: str | None = None,
                          tenant_id: str | None = None) -> str | None: ...

    async def on_events(self, subject: str, handler: EnvelopeHandler, *,
                        per_call: bool = False) -> Unsubscribable: ...

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]: ...


class Refused(Exception):
    """A chat request that gets an error answer."""

    def __init__(self, error: ChatError, detail: str) -> None:
        super().__init__(detail)
        self.error, self.detail = error, detail


class ChatSession:
    """One live chat on this replica: its lifecycle events, the messages sent, the replies awaited."""

    def __init__(self, record: CallRecord, *, bus: BusPort, desk: ChatDesk,
                 on_closed: Callable[[ChatSession], Awaitable[None]]) -> None:
        self.record, self.bus, self.desk = record, bus, desk
        self.call_id, self.tenant_id = record.call_id, record.tenant_id
        self._on_closed = on_closed
        self.started_at = time.monotonic()
        self.last_active = self.started_at
        self.turns = 0  # messages sent
        self.ended = False
        self.end_reason: events.EndReason | None = None
        self._lock = asyncio.Lock()  # one message waits for its reply at a time
        self._subs: list[Unsubscribable] = []
        # turn id -> the future its TurnCompleted resolves (the greeting's, then one message's at a time)
        self._waiting: Recent = Recent(MAX_REMEMBERED_TURNS)
        self._hang_up_after: Recent = Recent(MAX_REMEMBERED_TURNS)  # turn ids whose reply ends the chat
        self._completed: Recent = Recent(MAX_REMEMBERED_TURNS)  # turn ids whose TurnCompleted came
        self._hang_up_reason = events.EndReason.agent_hangup

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    # ------------------------------------------------------------ lifecycle
    async def open(self, greeting: str | None, wait_s: float, requests: dict[str, RawHandler]) -> str | None:
        """Serve the chat's ``requests`` (op -> handler), follow the call's events, announce it answered, and wait
        for the agent's greeting (its first message, once brain has sent it) when it has one.
        ``Refused(timeout)`` when the greeting does not come in time."""
        for op, handler in requests.items():
            subject = subjects.ingress_call_rpc(rpc.CHANNEL, self.call_id, op)
            self._subs.append(await self.bus.subscribe(subject, catching(SVC, subject, handler)))
        self._subs.append(await self.desk.on_events(subjects.call_wildcard(self.call_id), self._on_event,
                                                    per_call=True))
        waiter = self._expect(GREETING) if greeting else None
        await self._publish(events.CallAnswered(stream_id=None, media_format=MEDIA_FORMAT))
        if waiter is None:
            return None
        done = await self._wait(waiter, GREETING, wait_s, "the agent did not greet in time")
        return done.agent_text or greeting

    async def end(self, reason: events.EndReason, detail: str | None = None, *, announce: bool = True) -> None:
        """End the chat once: answer what waits, unsubscribe, publish ``CallEnded``, forget the KV record."""
        if self.ended:
            return
        self.ended, self.end_reason = True, reason
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(Refused(ChatError.ended, "the chat has ended"))
        self._waiting.clear()
        subs, self._subs = self._subs, []
        for s in subs:
            with contextlib.suppress(Exception):
                await s.unsubscribe()
        if announce:
            duration = round(time.monotonic() - self.started_at, 3)
            with contextlib.suppress(Exception):
                await self._publish(events.CallEnded(reason=reason, detail=detail, duration_s=duration),
                                    event_id=f"{self.call_id}-ended")
        with contextlib.suppress(Exception):
            await self.desk.kv[KV_CALLS.bucket].delete(subjects.call_key(self.call_id))
        log.info("chat_ended", call_id=self.call_id, tenant_id=self.tenant_id, reason=reason.value,
                 turns=self.turns)
        await self._on_closed(self)

    # ------------------------------------------------------------ the user's messages
    async def say(self, text: str, wait_s: float) -> ChatAnswer:
        """Send one message as the caller's turn; the agent's reply once brain has sent all of it."""
        if self.ended:
            raise Refused(ChatError.ended, "the chat has ended")
        if self._lock.locked():
            raise Refused(ChatError.busy, "a message is still waiting for its reply")
        async with self._lock:
            self.turns += 1
            turn, turn_id = self.turns, subjects.new_id()
            self.last_active = time.monotonic()
            waiter = self._expect(turn_id)
            now_ms = time.time() * 1000
            # what stt publishes for a spoken turn; a typed message is its own end of turn
            await self._publish(events.TranscriptFinalized(utterance_id=turn_id, text=text, speech_end_wall_ms=now_ms),
                                turn_id=turn_id, event_id=f"{self.call_id}-{turn_id}-text")
            try:
                done = await self._wait(waiter, turn_id, wait_s, "the agent did not answer in time")
            finally:
                self.last_active = time.monotonic()
            ended = turn_id in self._hang_up_after
            if ended:
                self.desk.spawn(self.end(self._hang_up_reason), name=f"chat-end:{self.call_id}")
            return ChatAnswer(reply=done.agent_text, turn=turn, ended=ended)

    def _expect(self, turn_id: str) -> asyncio.Future[events.TurnCompleted]:
        fut: asyncio.Future[events.TurnCompleted] = asyncio.get_running_loop().create_future()
        self._waiting[turn_id] = fut
        return fut

    async def _wait(self, fut: asyncio.Future[events.TurnCompleted], turn_id: str, wait_s: float,
                    late: str) -> events.TurnCompleted:
        try:
            return await asyncio.wait_for(fut, wait_s)
        except TimeoutError:
            raise Refused(ChatError.timeout, late) from None
        finally:
            if self._waiting.get(turn_id) is fut:
                del self._waiting[turn_id]

    # ------------------------------------------------------------ what the platform says
    async def _on_event(self, env: Envelope[Any]) -> None:
        """Every event of the call, in the order published (one subscription): replies, hang-ups, transfers (refused:
        ``call.transfer_failed``), an end."""
        data, turn_id = env.data, env.turn_id
        if isinstance(data, events.ReplyChunk):
            if data.final and data.hangup_after and turn_id:
                self._hang_up_after[turn_id] = True  # known before its TurnCompleted: the answer says ended
        elif isinstance(data, events.TurnCompleted) and turn_id:
            self._completed[turn_id] = True
            fut = self._waiting.get(turn_id)
            if fut is not None and not fut.done():
                fut.set_result(data)
            elif turn_id in self._hang_up_after:  # nobody waits for it (timed out): end the chat now
                self._end_later(self._hang_up_reason)
        elif isinstance(data, events.HangUp):
            self._hang_up_reason = data.reason
            if data.after_playout and turn_id and turn_id not in self._completed:
                self._hang_up_after[turn_id] = True  # its reply is still on the way: end once it is sent
            else:
                self._end_later(data.reason)
        elif isinstance(data, events.Transfer):  # a chat has nobody to hand over
            await self._publish(events.TransferFailed(reason=CANNOT_TRANSFER, requested_by=data.requested_by))
        elif isinstance(data, events.SendDtmf):  # nor a keypad
            await self._publish(events.DtmfSent(ok=False, reason=CANNOT_DTMF, requested_by=data.requested_by))
        elif isinstance(data, events.CallEnded):
            if not self.ended:  # ended elsewhere: whoever ended it announced it
                self._end_later(events.EndReason.status_callback, announce=False)

    def _end_later(self, reason: events.EndReason, *, announce: bool = True) -> None:
        # not inline: ending unsubscribes the subscription this runs in, which would cancel it halfway
        self.desk.spawn(self.end(reason, announce=announce), name=f"chat-end:{self.call_id}")

    async def _publish(self, data: Any, *, turn_id: str | None = None, event_id: str | None = None) -> None:
        await self.bus.publish(make(data, tenant_id=self.tenant_id, call_id=self.call_id, turn_id=turn_id,
                                    event_id=event_id))


class ChatEndpoint(Endpoint):
    """Text chats over core request/reply (``voice_schemas.chat``); no HTTP route of its own."""

    def __init__(self, desk: ChatDesk, settings: ChatSettings, token_settings: calltoken.CallTokenSettings) -> None:
        super().__init__(desk)
        self.chat_desk = desk
        self.settings = settings
        self.key = token_settings.call_token_key_bytes()
        self.sessions: dict[str, ChatSession] = {}
        self._opening = 0  # opens in progress (they count against chat_max_sessions)
        self._subs: list[Unsubscribable] = []
        self._sweeper: asyncio.Task[Any] | None = None

    async def start(self) -> None:
        bus = self.chat_desk.bus
        assert bus is not None
        subject = subjects.ingress_rpc(rpc.CHANNEL, rpc.OPEN)
        self._subs.append(await bus.subscribe(subject, catching(SVC, subject, self._on_open), queue=QUEUE_GROUP))
        self._sweeper = self.chat_desk.spawn(self._sweep(), name="chat-idle-sweep")
        if self.key is None:
            log.warning("chats_refused", detail="no CALL_TOKEN_KEY: every text chat is refused")

    async def stop(self) -> None:
        for s in self._subs:
            with contextlib.suppress(Exception):
                await s.unsubscribe()
        self._subs.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for session in list(self.sessions.values()):
            await session.end(events.EndReason.shutdown)

    # ------------------------------------------------------------ requests
    async def _on_open(self, msg: Message) -> None:
        self._answer_later(msg, rpc.OPEN, self._open)

    def _answer_later(self, msg: Message, op: str, work: Callable[[bytes], Awaitable[ChatAnswer]]) -> None:
        """Answer ``work(body)`` in a task of its own: a subscription runs one callback at a time, and an answer
        waits for the agent."""

        async def run() -> None:
            try:
                if len(msg.data) > MAX_REQUEST_BYTES:
                    raise Refused(ChatError.invalid, "request too large")
                answer = await work(msg.data)
            except Refused as e:
                answer = ChatAnswer(error=e.error, detail=e.detail)
            except ValidationError as e:
                answer = ChatAnswer(error=ChatError.invalid, detail=_first_error(e))
            except Exception as e:
                metrics.ERRORS.labels(SVC, "chat").inc()
                log.error("chat_request_failed", op=op, error=safe_error(e, 200))
                answer = ChatAnswer(error=ChatError.unavailable, detail="the chat request failed")
            REQUESTS.labels(op, answer.error.value if answer.error else "ok").inc()
            bus = self.chat_desk.bus
            if msg.reply and bus is not None:
                await bus.publish_nowait(msg.reply, answer.model_dump_json(exclude_none=True).encode())

        self.chat_desk.spawn(run(), name=f"chat-{op}")

    async def _open(self, raw: bytes) -> ChatAnswer:
        req = rpc.ChatOpen.model_validate_json(raw)
        if self.key is None:
            raise Refused(ChatError.unavailable, "text chat is not configured on this deployment (CALL_TOKEN_KEY)")
        try:
            grant = calltoken.verify(self.key, req.token, channel=rpc.CHANNEL)
        except calltoken.InvalidCallToken as e:
            raise Refused(ChatError.refused, str(e)) from None
        if len(self.sessions) + self._opening >= self.settings.chat_max_sessions:
            raise Refused(ChatError.unavailable, "this ingress replica holds as many chats as it may")
        self._opening += 1
        try:
            await self._claim(grant.jti)
            return await self._start(grant, req.wait_s)
        finally:
            self._opening -= 1

    async def _claim(self, jti: str) -> None:
        """A token opens one chat: its id is created once in KV, where every replica sees it."""
        try:
            await self.chat_desk.kv[KV_CALLS.bucket].create(subjects.grant_key(jti), b"1")
        except KeyWrongLastSequenceError:
            raise Refused(ChatError.refused, "call token already used") from None
        except subjects.InvalidSubjectToken:
            raise Refused(ChatError.refused, "malformed call token claims") from None

    async def _start(self, grant: calltoken.CallGrant, wait_s: float) -> ChatAnswer:
        desk = self.chat_desk
        bus = desk.bus
        assert bus is not None and desk.directory is not None
        call_id = await desk.create_call(channel=events.Channel.chat, to_number="", from_number=None,
                                         provider_call_id=None, agent_id=grant.agent_id, tenant_id=grant.tenant_id)
        if call_id is None:
            raise Refused(ChatError.not_found, "no such active agent")
        record = await self._record(call_id)
        if record is None:  # written by create_call a moment ago
            raise Refused(ChatError.unavailable, "the chat's call record is missing")
        agent = await desk.directory.version(record.agent_id, record.agent_version)
        session = ChatSession(record, bus=bus, desk=desk, on_closed=self._closed)
        self.sessions[call_id] = session
        ACTIVE.set(len(self.sessions))
        try:
            greeting = await session.open(agent.first_message if agent else None, wait_s, {
                rpc.SAY: lambda msg: self._on_say(session, msg),
                rpc.END: lambda msg: self._on_end(session, msg),
            })
        except Refused as e:
            await session.end(events.EndReason.timeout if e.error == ChatError.timeout else events.EndReason.error,
                              e.detail)
            raise
        except asyncio.CancelledError:
            await session.end(events.EndReason.shutdown, "cancelled while the chat was opening")
            raise
        except Exception as e:
            await session.end(events.EndReason.error, f"the chat could not be opened: {e!r}"[:200])
            raise
        log.info("chat_started", call_id=call_id, tenant_id=record.tenant_id, agent_id=record.agent_id,
                 by=grant.subject)
        return ChatAnswer(call_id=call_id, greeting=greeting)

    async def _on_say(self, session: ChatSession, msg: Message) -> None:
        self._answer_later(msg, rpc.SAY, lambda raw: self._say(session, raw))

    async def _on_end(self, session: ChatSession, msg: Message) -> None:
        self._answer_later(msg, rpc.END, lambda raw: self._end(session, raw))

    async def _say(self, session: ChatSession, raw: bytes) -> ChatAnswer:
        req = rpc.ChatSay.model_validate_json(raw)
        _same_tenant(session, req.tenant_id)
        text = req.text.strip()
        if not text:
            raise Refused(ChatError.invalid, "text must not be blank")
        return await session.say(text, req.wait_s)

    async def _end(self, session: ChatSession, raw: bytes) -> ChatAnswer:
        req = rpc.ChatEnd.model_validate_json(raw)
        _same_tenant(session, req.tenant_id)
        ended = not session.ended
        await session.end(events.EndReason.caller_hangup)
        return ChatAnswer(ended=ended)

    # ------------------------------------------------------------ housekeeping
    async def _closed(self, session: ChatSession) -> None:
        self.sessions.pop(session.call_id, None)
        ACTIVE.set(len(self.sessions))

    async def _sweep(self) -> None:
        """End chats idle for ``chat_idle_timeout_s`` (a message waiting for its reply is not idle)."""
        idle_s = self.settings.chat_idle_timeout_s
        while True:
            await asyncio.sleep(min(5.0, idle_s / 4))
            now = time.monotonic()
            for session in list(self.sessions.values()):
                if not session.busy and now - session.last_active > idle_s:
                    await session.end(events.EndReason.timeout, "idle")

    async def _record(self, call_id: str) -> CallRecord | None:
        try:
            entry = await self.chat_desk.kv[KV_CALLS.bucket].get(subjects.call_key(call_id))
        except KeyNotFoundError:
            return None
        return CallRecord.model_validate_json(entry.value) if entry.value else None


def _same_tenant(session: ChatSession, tenant_id: str) -> None:
    if tenant_id != session.tenant_id:
        raise Refused(ChatError.not_found, "no such chat")


def _first_error(e: ValidationError) -> str:
    errors = e.errors(include_url=False, include_input=False)
    if not errors:
        return "invalid request"
    where = ".".join(str(p) for p in errors[0]["loc"]) or "body"
    return f"{where}: {errors[0]['msg']}"[:200]
