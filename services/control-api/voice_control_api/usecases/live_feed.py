"""Live feeds: the events of live calls as server-sent events, per call and per tenant, resumable.

Every event is read from the durable CALLS stream and sent with its stream sequence as the SSE id, so a client that
reconnects with ``Last-Event-ID`` resumes from the stream itself: it misses nothing and gets nothing twice. A feed
reads through an ephemeral JetStream consumer of its own (no acks, in memory, deleted when idle), started at a
stream sequence and checked for gaps like an ordered consumer: a gap (a lost delivery) recreates it from the next
sequence the client has not seen.

Subjects carry the call id, not the tenant. A tenant's feed is selected with a per-tenant index of its calls
instead of decoding every tenant's events: its consumer's filter is ``call.*.lifecycle.*`` (three small events per
call, whatever the tenant; their envelope names the tenant) plus the feed subjects of each call of this tenant it
follows. A ``call.started`` of the tenant adds the call: the consumer is recreated from the sequence after that
event with the call's subjects added, so the call's later events arrive in stream order with every other call's.
A resumed tenant feed starts from the tenant's calls that are live or ended within ``live_feed_resume_window_s``
(PostgreSQL, written by analytics from ``call.started``): following a call too many only adds the tenant's own
events after the resume point, never one the client already has. The alternative, republishing lifecycle (or
everything) to a tenant-keyed subject, would avoid the lifecycle scan but needs a service in the path of every
event and a second stream whose sequence is not the CALLS sequence; at three lifecycle events per call the scan is
cheap.

Bounded: feeds per tenant and per credential (``live_feed_max_per_*``, per replica), calls one tenant feed follows
(``live_feed_max_calls``; beyond it a call shows only its lifecycle), and each feed's buffer
(``live_feed_buffer``): a client that does not read is disconnected (an ``error`` event says so) rather than
buffered for without limit; it reconnects with ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from nats.js import api as jsapi
from voice_runtime.logging import get_logger, safe_error
from voice_schemas import subjects
from voice_schemas.streams import CALLS

from ..context import AppContext
from ..principal import Principal
from ..store import calls as call_store
from .common import connection, found
from .errors import Unavailable
from .live import call_record

log = get_logger(__name__)

# what a feed carries of a call, under call.<id>: lifecycle, transcripts (partial and final, the caller's words),
# completed turns (the agent's words), sentiment, summaries, tools and approvals, whispers
CALL_KINDS: tuple[tuple[str, str], ...] = (
    ("lifecycle", "*"),
    ("transcript", "*"),
    ("turn", "completed"),
    ("analytics", "*"),
    ("tool", "*"),
    ("supervisor", "whisper"),
)
LIFECYCLE_INDEX = subjects.any_call("lifecycle", "*")
FETCH_BATCH = 64
CONSUMER_IDLE_S = 60.0  # the server deletes a feed's consumer this long after its reader is gone


@dataclass(frozen=True, slots=True)
class FeedEvent:
    seq: int  # CALLS stream sequence: the SSE id
    type: str
    data: bytes  # the event's envelope (JSON), as published


@dataclass(frozen=True, slots=True)
class FeedEnd:
    reason: str


def parse_last_event_id(raw: str | None) -> int | None:
    """The stream sequence of ``Last-Event-ID``; None when absent; ValueError when not a sequence."""
    if raw is None or not raw.strip():
        return None
    value = raw.strip()
    if not value.isdigit() or len(value) > 19:
        raise ValueError("Last-Event-ID must be an event id of this feed (a stream sequence)")
    return int(value)


def _call_filters(call_id: str, *, lifecycle: bool) -> list[str]:
    return [subjects.call_filter(call_id, kind, sub) for kind, sub in CALL_KINDS if lifecycle or kind != "lifecycle"]


class _Reader:
    """An ephemeral consumer of CALLS from one stream sequence with one filter, read in stream order."""

    def __init__(self, js: Any) -> None:
        self.js = js
        self.name: str | None = None
        self.sub: Any = None
        self.consumer_seq = 0

    async def open(self, filters: list[str], start_seq: int) -> None:
        await self.close()
        self.name = subjects.new_id()
        cfg = jsapi.ConsumerConfig(
            name=self.name,
            deliver_policy=jsapi.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(start_seq, 1),
            ack_policy=jsapi.AckPolicy.NONE,
            filter_subjects=filters,
            inactive_threshold=CONSUMER_IDLE_S,
            mem_storage=True,
            num_replicas=1,
        )
        await self.js.add_consumer(CALLS.name, config=cfg)
        self.sub = await self.js.pull_subscribe_bind(durable=None, stream=CALLS.name, name=self.name)
        self.consumer_seq = 0

    async def fetch(self, batch: int, timeout: float) -> list[Any] | None:
        """The next messages in order; [] when none came; None when one was lost (reopen from the last seen)."""
        assert self.sub is not None
        try:
            msgs = await self.sub.fetch(batch=batch, timeout=timeout)
        except TimeoutError:
            return [] if await self._caught_up() else None
        for m in msgs:
            cseq = m.metadata.sequence.consumer
            if cseq != self.consumer_seq + 1:
                return None
            self.consumer_seq = cseq
        return list(msgs)

    async def _caught_up(self) -> bool:
        """Nothing was delivered that the feed did not receive (a fetch that timed out can lose a delivery)."""
        try:
            info = await self.js.consumer_info(CALLS.name, self.name)
        except Exception:
            return False
        return int(info.delivered.consumer_seq or 0) <= self.consumer_seq

    async def close(self) -> None:
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()
        if self.name is not None:
            with contextlib.suppress(Exception):
                await self.js.delete_consumer(CALLS.name, self.name)
        self.sub, self.name = None, None


async def _last_seq(js: Any) -> int:
    info = await js.stream_info(CALLS.name)
    return int(info.state.last_seq)


def _js(ctx: AppContext) -> Any:
    if ctx.js is None:
        raise Unavailable("the data plane is not connected")
    return ctx.js


async def _owns_agent(ctx: AppContext, principal: Principal, agent_id: str) -> bool:
    owner = principal.owner_filter
    if owner is None:
        return True
    async with connection(ctx) as conn:
        row = await conn.fetchval(
            "SELECT 1 FROM agents WHERE tenant_id = $1 AND id = $2 AND owner_user_id = $3",
            principal.tenant_id,
            agent_id,
            owner,
        )
    return bool(row)


async def visible_call(ctx: AppContext, principal: Principal, call_id: str) -> bool:
    """Whether the call is live. NotFound unless the principal may see it, exactly as the calls API scopes calls
    (its tenant's; a supervisor's only when they own its agent): the live ``calls`` record, else the stored call."""
    try:
        subjects.check_id(call_id, "call_id")
    except subjects.InvalidSubjectToken:
        found(None, "call")
    rec = await call_record(ctx, call_id)
    if rec is not None:
        if rec.tenant_id != principal.tenant_id or not await _owns_agent(ctx, principal, rec.agent_id):
            found(None, "call")
        return True
    async with connection(ctx) as conn:
        found(await call_store.get(conn, principal.tenant_id, call_id, owner=principal.owner_filter), "call")
    return False


class _Feed:
    """Reads the stream into a bounded queue; ``events`` yields from it (and heartbeat ticks as None)."""

    def __init__(self, ctx: AppContext, principal: Principal) -> None:
        s = ctx.settings
        self.ctx, self.principal = ctx, principal
        self.reader = _Reader(_js(ctx))
        self.queue: asyncio.Queue[FeedEvent | FeedEnd] = asyncio.Queue(maxsize=s.live_feed_buffer)
        self.heartbeat_s = s.live_feed_heartbeat_s
        self.next_seq = 1

    def emit(self, seq: int, type_: str, data: bytes) -> bool:
        try:
            self.queue.put_nowait(FeedEvent(seq, type_, data))
        except asyncio.QueueFull:
            return False
        return True

    async def run(self) -> None:  # overridden
        raise NotImplementedError

    async def _run(self) -> None:
        try:
            await self.run()
        except asyncio.CancelledError:
            raise
        except _SlowClient:
            self._end("slow client: reconnect with Last-Event-ID")
        except Exception as e:
            log.warning("live_feed_failed", tenant_id=self.principal.tenant_id, error=safe_error(e, 200))
            self._end("the feed failed: reconnect with Last-Event-ID")
        finally:
            await self.reader.close()

    def _end(self, reason: str) -> None:
        while True:  # the end always fits: drop what the client has not read (it resumes from its last id)
            try:
                self.queue.put_nowait(FeedEnd(reason))
                return
            except asyncio.QueueFull:
                self.queue.get_nowait()

    async def events(self) -> AsyncIterator[FeedEvent | FeedEnd | None]:
        task = asyncio.create_task(self._run())
        try:
            while True:
                try:
                    item = await asyncio.wait_for(self.queue.get(), timeout=self.heartbeat_s)
                except TimeoutError:
                    yield None
                    continue
                yield item
                if isinstance(item, FeedEnd):
                    return
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def _fetch(self) -> list[Any]:
        """The next messages; reopens the reader from ``next_seq`` after a lost delivery."""
        while True:
            room = self.queue.maxsize - self.queue.qsize()
            if room <= 0:
                raise _SlowClient
            msgs = await self.reader.fetch(min(FETCH_BATCH, room), self.heartbeat_s)
            if msgs is not None:
                return msgs
            await self.reopen()

    async def reopen(self) -> None:
        raise NotImplementedError


class _SlowClient(Exception):
    pass


class CallFeed(_Feed):
    """One call's events, from its start (or after ``Last-Event-ID``)."""

    def __init__(self, ctx: AppContext, principal: Principal, call_id: str, after: int | None) -> None:
        super().__init__(ctx, principal)
        self.call_id = call_id
        self.next_seq = (after or 0) + 1

    async def reopen(self) -> None:
        await self.reader.open(_call_filters(self.call_id, lifecycle=True), self.next_seq)

    async def run(self) -> None:
        await self.reopen()
        while True:
            for m in await self._fetch():
                seq = m.metadata.sequence.stream
                self.next_seq = seq + 1
                head = _head(m.data)
                if head is None or head[0] != self.principal.tenant_id:
                    continue  # never another tenant's (a call id is unguessable, but a subject is not a tenant)
                if not self.emit(seq, head[2], m.data):
                    raise _SlowClient


class TenantFeed(_Feed):
    """The events of every call of the tenant the principal may see (a supervisor: their agents' calls)."""

    def __init__(self, ctx: AppContext, principal: Principal, after: int | None) -> None:
        super().__init__(ctx, principal)
        self.after = after
        self.max_calls = ctx.settings.live_feed_max_calls
        self.followed: dict[str, bool] = {}  # call id -> ended (kept for the events after the end: the summary)
        self.agents: dict[str, bool] = {}  # agent id -> the principal sees its calls (supervisors)

    def filters(self) -> list[str]:
        out = [LIFECYCLE_INDEX]
        for call_id in self.followed:
            out += _call_filters(call_id, lifecycle=False)
        return out

    async def reopen(self) -> None:
        await self.reader.open(self.filters(), self.next_seq)

    async def _start(self) -> None:
        """The calls followed from the start: the tenant's live calls (and, on a resume, those ended within the
        window), and the sequence to start from."""
        js = self.reader.js
        if self.after is None:
            self.next_seq = await _last_seq(js) + 1
        else:
            self.next_seq = self.after + 1
        window = self.ctx.settings.live_feed_resume_window_s if self.after is not None else 0.0
        async with connection(self.ctx) as conn:
            rows = await conn.fetch(
                f"""
                SELECT c.id FROM calls c
                WHERE c.tenant_id = $1 AND {call_store._OWNED}
                  AND (c.ended_at IS NULL OR c.ended_at >= now() - make_interval(secs => $3))
                  AND c.channel <> 'chat'
                ORDER BY c.started_at DESC LIMIT $4
                """,
                self.principal.tenant_id,
                self.principal.owner_filter,
                window,
                self.max_calls,
            )
        for r in rows:
            self.followed[r["id"]] = False

    async def _sees_agent(self, agent_id: str) -> bool:
        if agent_id not in self.agents:
            if len(self.agents) >= 1000:
                self.agents.clear()
            self.agents[agent_id] = await _owns_agent(self.ctx, self.principal, agent_id)
        return self.agents[agent_id]

    def _make_room(self) -> bool:
        if len(self.followed) < self.max_calls:
            return True
        for call_id, ended in list(self.followed.items()):
            if ended:
                del self.followed[call_id]
                return True
        return False

    async def run(self) -> None:
        await self.reopen()
        tenant = self.principal.tenant_id
        while True:
            for m in await self._fetch():
                seq = m.metadata.sequence.stream
                self.next_seq = seq + 1
                head = _head(m.data)
                if head is None or head[0] != tenant:
                    continue  # another tenant's lifecycle event: only its envelope head was read
                _, call_id, type_ = head
                if type_ == "call.started" and call_id not in self.followed:
                    agent_id = _agent_of(m.data)
                    if agent_id is None or not await self._sees_agent(agent_id):
                        continue
                    if not self.emit(seq, type_, m.data):
                        raise _SlowClient
                    if self._make_room():
                        self.followed[call_id] = False
                        await self.reopen()  # from the next sequence, with this call's subjects
                        break  # the rest of this batch was read without them
                    continue
                if call_id not in self.followed:
                    if not m.subject.split(".")[2] == "lifecycle" or type_ == "call.started":
                        continue
                    if not await self._sees_call(call_id, m.data):
                        continue
                elif type_ == "call.ended":
                    self.followed[call_id] = True
                if not self.emit(seq, type_, m.data):
                    raise _SlowClient

    async def _sees_call(self, call_id: str, raw: bytes) -> bool:
        """A lifecycle event of a call not followed (over the limit, or started before the feed): shown when the
        principal sees the call's agent (the live record names it)."""
        rec = await call_record(self.ctx, call_id)
        if rec is None:
            return self.principal.owner_filter is None
        return await self._sees_agent(rec.agent_id)


def _head(raw: bytes) -> tuple[str, str, str] | None:
    """(tenant_id, call_id, type) of an envelope; None when it cannot be read."""
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    tenant, call_id, type_ = obj.get("tenant_id"), obj.get("call_id"), obj.get("type")
    if not (isinstance(tenant, str) and isinstance(call_id, str) and isinstance(type_, str)):
        return None
    return tenant, call_id, type_


def _agent_of(raw: bytes) -> str | None:
    try:
        data = json.loads(raw).get("data") or {}
    except (ValueError, AttributeError):
        return None
    agent_id = data.get("agent_id") if isinstance(data, dict) else None
    return agent_id if isinstance(agent_id, str) else None


async def call_feed(ctx: AppContext, principal: Principal, call_id: str, after: int | None) -> CallFeed:
    """A feed of one call the principal may see (NotFound otherwise); ``after``: the last sequence the client has."""
    _js(ctx)
    await visible_call(ctx, principal, call_id)
    return CallFeed(ctx, principal, call_id, after)


async def tenant_feed(ctx: AppContext, principal: Principal, after: int | None) -> TenantFeed:
    _js(ctx)
    feed = TenantFeed(ctx, principal, after)
    await feed._start()  # the start is fixed before the response: an event published after it is in the feed
    return feed


def sse(item: FeedEvent | FeedEnd | None) -> bytes:
    """One SSE message: an event (id = stream sequence, event = type, data = the envelope), the end of the feed,
    or (None) a heartbeat comment."""
    if item is None:
        return b": heartbeat\n\n"
    if isinstance(item, FeedEnd):
        return b"event: error\ndata: " + json.dumps({"reason": item.reason}).encode() + b"\n\n"
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (item.seq, item.type.encode(), item.data.replace(b"\n", b""))
