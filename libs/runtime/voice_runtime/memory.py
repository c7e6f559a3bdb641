"""An in-memory bus for tests: the same surface as ``Bus`` (publish, core subscriptions, durable consumers
with the same ack policy, KV buckets, last message per subject), no broker.

A stage's test body can run against it and against real NATS unchanged (parametrize the bus). What it does not
model: ack waits, delivery across processes, stream limits, and the server's own behaviour (filters on old
servers, clustering); the real-NATS integration tests cover those.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from voice_schemas import Envelope, subjects
from voice_schemas.streams import KV_BUCKETS, STREAMS, ConsumerDef, KvDef, StreamDef

from . import metrics
from .bus import H_MSG_ID, NoResponders, dead_letter_headers, deliver
from .handlers import EnvelopeHandler, RawHandler


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, ``>`` one or more trailing tokens."""
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


@dataclass
class MemoryMessage:
    subject: str
    data: bytes
    headers: dict[str, str] | None = None
    seq: int = 0
    reply: str = ""  # a core request's inbox: answer with ``publish_nowait(reply, body)``


@dataclass
class MemoryEntry:
    key: str
    value: bytes | None
    revision: int


class MemoryKV:
    """The subset of ``nats.js.kv.KeyValue`` the services use, with the same errors."""

    def __init__(self, bucket: str) -> None:
        self.bucket = bucket
        self._rev = 0
        self._data: dict[str, MemoryEntry] = {}

    def _write(self, key: str, value: bytes | None) -> int:
        self._rev += 1
        self._data[key] = MemoryEntry(key, value, self._rev)
        return self._rev

    async def get(self, key: str) -> MemoryEntry:
        e = self._data.get(key)
        if e is None or e.value is None:
            raise KeyNotFoundError
        return e

    async def put(self, key: str, value: bytes) -> int:
        return self._write(key, value)

    async def create(self, key: str, value: bytes) -> int:
        e = self._data.get(key)
        if e is not None and e.value is not None:
            raise KeyWrongLastSequenceError
        return self._write(key, value)

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        e = self._data.get(key)
        if e is None or (last is not None and e.revision != last):
            raise KeyWrongLastSequenceError
        return self._write(key, value)

    async def delete(self, key: str, last: int | None = None) -> bool:
        e = self._data.get(key)
        if e is not None and last is not None and e.revision != last:
            raise KeyWrongLastSequenceError
        self._write(key, None)
        return True

    async def purge(self, key: str) -> bool:
        self._data.pop(key, None)
        return True

    async def keys(self) -> list[str]:
        keys = [k for k, e in self._data.items() if e.value is not None]
        if not keys:
            raise KeyNotFoundError  # as nats-py does for an empty bucket
        return keys

    def __len__(self) -> int:
        return sum(1 for e in self._data.values() if e.value is not None)


@dataclass
class _Sub:
    """A core subscription: its callback runs for one message at a time, in order (as nats-py does)."""

    bus: InMemoryBus
    subject: str
    cb: RawHandler
    group: str = ""  # queue group: one member of a group gets each message
    queue: asyncio.Queue[MemoryMessage] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"memory-sub:{self.subject}")

    async def _run(self) -> None:
        while True:
            msg = await self.queue.get()
            try:
                await self.cb(msg)
            except Exception:  # nats-py reports callback errors to its error callback and goes on
                pass
            finally:
                self.queue.task_done()

    @property
    def idle(self) -> bool:
        return self.queue.empty() and self.queue._unfinished_tasks == 0  # type: ignore[attr-defined]

    async def unsubscribe(self) -> None:
        with contextlib.suppress(ValueError):
            self.bus._subs.remove(self)
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()


@dataclass
class MemoryConsumer:
    """A durable consumer: deliveries in order of arrival, ``concurrency`` at a time, the bus's ack policy."""

    bus: InMemoryBus
    d: ConsumerDef
    handler: EnvelopeHandler
    pending: asyncio.Queue[tuple[MemoryMessage, int]] = field(default_factory=asyncio.Queue)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    acked: int = 0
    naked: int = 0
    dead: int = 0
    _busy: int = 0

    def start(self) -> None:
        for i in range(self.d.concurrency):
            t = asyncio.create_task(self._worker(), name=f"memory-consume:{self.d.durable}:{i}")
            self.tasks.add(t)

    async def _worker(self) -> None:
        while True:
            msg, delivered = await self.pending.get()
            self._busy += 1
            try:
                await self._one(msg, delivered)
            finally:
                self._busy -= 1
                self.pending.task_done()

    async def _one(self, msg: MemoryMessage, delivered: int) -> None:
        outcome = await deliver(self.d, self.bus.service, self.handler, msg.subject, msg.data, msg.headers,
                                delivered)
        if outcome.action == "ack":
            self.acked += 1
        elif outcome.action == "leave":
            # JetStream would deliver it again after the ack wait unless another copy was settled; in memory there
            # is no other copy, so it comes back after a pause
            loop = asyncio.get_running_loop()
            loop.call_later(self.bus.max_backoff_s, self.pending.put_nowait, (msg, delivered + 1))
        elif outcome.action == "nak":
            self.naked += 1
            loop = asyncio.get_running_loop()
            # the real backoff is seconds; in memory a redelivery comes after a short pause, in order
            loop.call_later(min(outcome.delay_s, self.bus.max_backoff_s), self.pending.put_nowait,
                            (msg, delivered + 1))
        else:
            self.dead += 1
            headers = dead_letter_headers(msg.headers, msg.subject, self.d.durable, outcome.error, delivered)
            await self.bus.publish_nowait(subjects.dead_letter(self.d.stream, self.d.durable), msg.data, headers)
            metrics.DEAD_LETTERS.labels(self.bus.service, self.d.durable).inc()

    @property
    def idle(self) -> bool:
        return self.pending.empty() and self._busy == 0

    async def stop(self, grace_s: float = 20.0) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.pending.join(), grace_s)
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()
        with contextlib.suppress(ValueError):
            self.bus._consumers.remove(self)


class InMemoryBus:
    """One process's bus with no broker. Streams keep every durable message; ``Nats-Msg-Id`` dedupes."""

    def __init__(self, service: str = "test", *, max_backoff_s: float = 0.02) -> None:
        self.service = service
        self.max_backoff_s = max_backoff_s
        self.streams: dict[str, StreamDef] = {}
        self.kv: dict[str, MemoryKV] = {}
        self.messages: dict[str, list[MemoryMessage]] = {}  # stream -> every message stored
        self.published: list[Envelope[Any]] = []  # durable envelopes, in publish order
        self._seen_ids: dict[str, set[str]] = {}
        self._seq = 0
        self._subs: list[_Sub] = []
        self._consumers: list[MemoryConsumer] = []
        self.closed = False

    # ------------------------------------------------------------ BusPort
    @property
    def connected(self) -> bool:
        return not self.closed

    async def provision(self, streams: tuple[StreamDef, ...] = STREAMS, buckets: tuple[KvDef, ...] = KV_BUCKETS,
                        consumers: tuple[ConsumerDef, ...] = ()) -> dict[str, Any]:
        for s in streams:
            self.streams.setdefault(s.name, s)
            self.messages.setdefault(s.name, [])
        for b in buckets:
            self.kv.setdefault(b.bucket, MemoryKV(b.bucket))
        return dict(self.kv)

    def _stream_of(self, subject: str) -> str | None:
        for name, s in self.streams.items():
            if any(subject_matches(p, subject) for p in s.subjects):
                return name
        return None

    async def publish(self, env: Envelope[Any], *, timeout: float = 5.0) -> int:
        data, headers = env.to_bytes(), {H_MSG_ID: env.id}
        stored = self._store(env.subject, data, headers)
        if stored is None:
            return 0  # duplicate (same event id): dropped as JetStream would
        self.published.append(env)
        metrics.EVENTS_PUBLISHED.labels(self.service, subjects.pattern_of(env.subject)).inc()
        await self._fan_out(stored)
        return stored.seq

    async def publish_nowait(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> None:
        stored = self._store(subject, data, headers)
        if stored is not None:
            await self._fan_out(stored)

    @property
    def dead_letters(self) -> list[MemoryMessage]:
        return list(self.messages.get("DEADLETTER", []))

    def _store(self, subject: str, data: bytes, headers: dict[str, str] | None) -> MemoryMessage | None:
        stream = self._stream_of(subject)
        self._seq += 1
        msg = MemoryMessage(subject, data, headers, self._seq)
        if stream is None:
            return msg
        msg_id = (headers or {}).get(H_MSG_ID)
        if msg_id is not None:
            seen = self._seen_ids.setdefault(stream, set())
            if msg_id in seen:
                return None
            seen.add(msg_id)
        self.messages[stream].append(msg)
        return msg

    async def _fan_out(self, msg: MemoryMessage) -> None:
        groups: set[str] = set()
        for sub in list(self._subs):
            if subject_matches(sub.subject, msg.subject):
                if sub.group:
                    if sub.group in groups:
                        continue  # one member of a queue group gets it
                    groups.add(sub.group)
                sub.queue.put_nowait(msg)  # runs concurrently with the publisher, as with NATS
        stream = self._stream_of(msg.subject)
        for c in self._consumers:
            if c.d.stream == stream and any(subject_matches(f, msg.subject) for f in c.d.filter_subjects):
                c.pending.put_nowait((msg, 1))

    async def subscribe(self, subject: str, cb: RawHandler, *, queue: str = "") -> _Sub:
        sub = _Sub(self, subject, cb, queue)
        sub.start()
        self._subs.append(sub)
        return sub

    async def request(self, subject: str, data: bytes, *, timeout: float) -> bytes:
        """Core request/reply as ``Bus.request``: ``NoResponders`` when no subscription matches."""
        answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def on_answer(msg: MemoryMessage) -> None:
            if not answer.done():
                answer.set_result(msg.data)

        if not any(subject_matches(s.subject, subject) for s in self._subs):
            raise NoResponders(subject)
        inbox = await self.subscribe(f"_INBOX.{uuid.uuid4().hex}", on_answer)  # type: ignore[arg-type]
        try:
            self._seq += 1
            await self._fan_out(MemoryMessage(subject, data, None, self._seq, reply=inbox.subject))
            return await asyncio.wait_for(answer, timeout)
        finally:
            await inbox.unsubscribe()

    async def consume(self, d: ConsumerDef, handler: EnvelopeHandler) -> MemoryConsumer:
        c = MemoryConsumer(self, d, handler)
        self._consumers.append(c)
        c.start()
        if d.deliver_policy == "all":
            for m in self.messages.get(d.stream, []):
                if any(subject_matches(f, m.subject) for f in d.filter_subjects):
                    c.pending.put_nowait((m, 1))
        return c

    async def last_message(self, stream: str, subject: str) -> tuple[int, bytes] | None:
        for m in reversed(self.messages.get(stream, [])):
            if m.subject == subject:
                return m.seq, m.data
        return None

    async def drain(self) -> None:
        self.closed = True
        for sub in list(self._subs):
            await sub.unsubscribe()

    async def close(self) -> None:
        self.closed = True

    # ------------------------------------------------------------ test helpers
    def events(self, *types: type) -> list[Envelope[Any]]:
        """Durable envelopes published so far, optionally of these payload types."""
        return [e for e in self.published if not types or isinstance(e.data, types)]

    async def settle(self, timeout: float = 5.0) -> None:
        """Wait until every consumer is idle and scheduled callbacks ran (the bus is quiet)."""
        deadline = time.monotonic() + timeout
        quiet = 0
        while quiet < 3:
            await asyncio.sleep(0.005)
            idle = all(c.idle for c in self._consumers) and all(s.idle for s in self._subs)
            quiet = quiet + 1 if idle else 0
            if time.monotonic() > deadline:
                raise TimeoutError("the in-memory bus did not settle")

    async def wait_for(self, predicate: Any, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("condition not met on the in-memory bus")
            await asyncio.sleep(0.005)

