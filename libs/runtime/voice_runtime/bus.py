"""NATS / JetStream runtime: connection, provisioning, publishing and durable consumers.

Ack policy (explicit on every consumer, never a library default):
- handler returns            -> ack
- handler raises Transient   -> nak with the consumer's backoff delay (redelivered, bounded by MaxDeliver)
- any other exception, or a message that does not parse (Poison) -> copied to ``dlq.<stream>.<consumer>``
  with the error in headers, then ``term`` (never redelivered)
- last allowed delivery fails transiently -> dead-lettered too, so nothing is silently lost
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue
from opentelemetry import trace
from pydantic import ValidationError
from voice_schemas import Envelope, UnknownEventType, parse, subjects
from voice_schemas.streams import CONSUMERS, KV_BUCKETS, STREAMS, ConsumerDef, KvDef, StreamDef

from . import metrics, telemetry
from .handlers import EnvelopeHandler as Handler
from .handlers import RawHandler, delivery
from .logging import get_logger, safe_error

log = get_logger(__name__)
_tracer = trace.get_tracer("voice.bus")

H_MSG_ID = "Nats-Msg-Id"


class Transient(Exception):
    """A failure worth retrying (dependency down, timeout). The message is nak'ed with backoff."""


class UnsupportedServer(RuntimeError):
    """The NATS server is too old for our consumers (multi-subject filters arrived in 2.10)."""


# multi-subject consumer filters (``filter_subjects``) arrived in nats-server 2.10; older servers ignore them
# silently and every durable consumer then receives every event of its stream
MIN_SERVER_VERSION = (2, 10)


def server_version(nc: NATS) -> str:
    v = nc.connected_server_version
    return f"{v.major}.{v.minor}.{v.patch}"


def check_server_version(version: str) -> None:
    try:
        major, minor = (int(x) for x in version.split("-")[0].split(".")[:2])
    except ValueError as e:
        raise UnsupportedServer(f"cannot read the NATS server's version {version!r}") from e
    if (major, minor) < MIN_SERVER_VERSION:
        need = ".".join(map(str, MIN_SERVER_VERSION))
        raise UnsupportedServer(
            f"NATS server {version} is too old: {need} or newer is required (multi-subject consumer filters); "
            "point NATS_URL at a newer server, or leave it unset for `make run` to start its embedded one")


class Poison(Exception):
    """A message that can never succeed. Dead-lettered and terminated at once."""


class NoResponders(Exception):
    """A core request found nobody serving its subject (no replica serves it, or the call it names is not live)."""




def _stream_config(d: StreamDef) -> jsapi.StreamConfig:
    return jsapi.StreamConfig(
        name=d.name,
        description=d.description,
        subjects=list(d.subjects),
        storage=jsapi.StorageType.FILE if d.storage == "file" else jsapi.StorageType.MEMORY,
        retention=jsapi.RetentionPolicy(d.retention),
        duplicate_window=d.duplicate_window_s,
        max_age=d.max_age_s,
        max_bytes=d.max_bytes,
        max_msg_size=d.max_msg_size,
        discard=jsapi.DiscardPolicy(d.discard),
        num_replicas=d.replicas,
    )


def _consumer_config(d: ConsumerDef) -> jsapi.ConsumerConfig:
    return jsapi.ConsumerConfig(
        durable_name=d.durable,
        description=d.description,
        ack_policy=jsapi.AckPolicy.EXPLICIT,
        ack_wait=d.ack_wait_s,
        max_deliver=d.max_deliver,
        max_ack_pending=d.max_ack_pending,
        deliver_policy=jsapi.DeliverPolicy.ALL if d.deliver_policy == "all" else jsapi.DeliverPolicy.NEW,
        filter_subjects=list(d.filter_subjects),
    )


@dataclass
class Bus:
    """One NATS connection per process, with JetStream and KV handles."""

    nc: NATS
    js: JetStreamContext
    service: str

    @classmethod
    async def connect(
        cls, url: str, service: str, *, connect_timeout: float = 5.0, initial_wait_s: float = 60.0
    ) -> Bus:
        async def on_error(e: Exception) -> None:
            log.warning("nats_error", error=str(e))

        async def on_disconnect() -> None:
            log.warning("nats_disconnected")

        async def on_reconnect() -> None:
            log.info("nats_reconnected")

        deadline = time.monotonic() + initial_wait_s
        while True:  # the server may start after us (k8s, make run): retry the first connect
            try:
                nc = await cls._connect(url, service, connect_timeout, on_error, on_disconnect, on_reconnect)
            except Exception as e:
                if time.monotonic() > deadline:
                    raise
                log.info("nats_waiting", error=str(e)[:200])
                await asyncio.sleep(0.5)
                continue
            try:
                check_server_version(server_version(nc))
            except UnsupportedServer:
                await nc.close()
                raise
            break
        return cls(nc=nc, js=nc.jetstream(timeout=5.0), service=service)

    @staticmethod
    async def _connect(url: str, service: str, connect_timeout: float, on_error: Any, on_disconnect: Any,
                       on_reconnect: Any) -> NATS:
        return await nats.connect(
            servers=[u.strip() for u in url.split(",")],
            name=service,
            connect_timeout=connect_timeout,
            reconnect_time_wait=0.5,
            max_reconnect_attempts=-1,
            allow_reconnect=True,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
        )

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    # ------------------------------------------------------------ provisioning (idempotent)
    async def ensure_stream(self, d: StreamDef) -> None:
        cfg = _stream_config(d)
        try:
            await self.js.stream_info(d.name)
            await self.js.update_stream(cfg)
        except NotFoundError:
            try:
                await self.js.add_stream(cfg)
            except BadRequestError:  # raced with another replica
                await self.js.update_stream(cfg)

    async def ensure_kv(self, d: KvDef) -> KeyValue:
        try:
            return await self.js.key_value(d.bucket)
        except Exception:
            cfg = jsapi.KeyValueConfig(
                bucket=d.bucket,
                description=d.description,
                history=d.history,
                ttl=d.ttl_s or None,
                storage=jsapi.StorageType.FILE if d.storage == "file" else jsapi.StorageType.MEMORY,
                max_value_size=d.max_value_size,
            )
            try:
                return await self.js.create_key_value(cfg)
            except BadRequestError:
                return await self.js.key_value(d.bucket)

    async def ensure_consumer(self, d: ConsumerDef) -> None:
        cfg = _consumer_config(d)
        try:
            await self.js.consumer_info(d.stream, d.durable)
            await self.js.add_consumer(d.stream, cfg)  # same name: updates what may change
        except NotFoundError:
            await self.js.add_consumer(d.stream, cfg)

    async def provision(
        self,
        streams: tuple[StreamDef, ...] = STREAMS,
        buckets: tuple[KvDef, ...] = KV_BUCKETS,
        consumers: tuple[ConsumerDef, ...] = (),
    ) -> dict[str, KeyValue]:
        for s in streams:
            await self.ensure_stream(s)
        kvs = {b.bucket: await self.ensure_kv(b) for b in buckets}
        for c in consumers:
            await self.ensure_consumer(c)
        return kvs

    # ------------------------------------------------------------ publishing
    async def publish(self, env: Envelope[Any], *, timeout: float = 5.0) -> jsapi.PubAck:
        """Publish a durable event: JetStream, Nats-Msg-Id = event id, traceparent from the current span."""
        headers = telemetry.inject({H_MSG_ID: env.id})
        subject = env.subject
        ack = await self.js.publish(subject, env.to_bytes(), headers=headers, timeout=timeout)
        metrics.EVENTS_PUBLISHED.labels(self.service, subjects.pattern_of(subject)).inc()
        return ack

    async def publish_nowait(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> None:
        """Fire-and-forget (real-time class). A stream subject is still captured by JetStream."""
        await self.nc.publish(subject, data, headers=headers)

    async def last_message(self, stream: str, subject: str) -> tuple[int, bytes] | None:
        """The stream's last message on ``subject`` as (sequence, data), or None when there is none."""
        try:
            raw = await self.js.get_last_msg(stream, subject)
        except NotFoundError:
            return None
        if raw.data is None or raw.seq is None:
            return None
        return raw.seq, raw.data

    async def request(self, subject: str, data: bytes, *, timeout: float) -> bytes:
        """Core request/reply (never JetStream): the body of the first answer. ``NoResponders`` when nobody serves
        ``subject``, ``TimeoutError`` when no answer came within ``timeout`` seconds. The server side answers with
        ``publish_nowait(msg.reply, body)``."""
        try:
            msg = await self.nc.request(subject, data, timeout=timeout)
        except NoRespondersError as e:
            raise NoResponders(subjects.pattern_of(subject)) from e
        return msg.data

    # ------------------------------------------------------------ consuming
    async def subscribe(self, subject: str, cb: RawHandler, *, queue: str = "") -> Subscription:
        """A core NATS subscription: every replica receives every message, or, with ``queue``, one member of
        that queue group does."""
        return await self.nc.subscribe(subject, queue=queue, cb=cb)

    async def consume(self, d: ConsumerDef, handler: Handler) -> DurableConsumer:
        await self.ensure_consumer(d)
        c = DurableConsumer(self, d, handler)
        c.start()
        return c

    async def drain(self) -> None:
        with contextlib.suppress(Exception):
            await self.nc.drain()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.nc.close()


@dataclass(frozen=True)
class Outcome:
    """What the ack policy decided for one delivery."""

    action: Literal["ack", "nak", "dead_letter"]
    delay_s: float = 0.0
    error: str = ""


async def deliver(d: ConsumerDef, service: str, handler: Handler, subject: str, data: bytes,
                  headers: dict[str, str] | None, delivered: int) -> Outcome:
    """Run ``handler`` on one delivery and apply the ack policy of this module (transport-neutral: the NATS
    consumer and the in-memory bus both act on the returned outcome)."""
    try:
        env = parse(data)
    except (ValidationError, UnknownEventType, ValueError) as e:
        return Outcome("dead_letter", error=f"unparseable: {safe_error(e, 490)}")
    ctx = telemetry.extract(headers)
    delivery.set(delivered)
    try:
        with _tracer.start_as_current_span(
            f"{subjects.pattern_of(subject)} process", context=ctx, kind=trace.SpanKind.CONSUMER,
            attributes={"messaging.system": "nats", "messaging.consumer.group.name": d.durable,
                        "call_id": env.call_id, "tenant_id": env.tenant_id, "turn_id": env.turn_id or ""},
        ):
            await handler(env)
    except Transient as e:
        if delivered >= d.max_deliver:
            return Outcome("dead_letter", error=f"exhausted {delivered} deliveries: {e}"[:500])
        delay = d.backoff_s[min(delivered - 1, len(d.backoff_s) - 1)]
        log.warning("handler_transient", consumer=d.durable, delivery=delivered, delay_s=delay, error=str(e)[:300])
        return Outcome("nak", delay_s=delay, error=str(e)[:500])
    except Exception as e:  # Poison, NoHandler and every unexpected failure
        log.error("handler_poison", consumer=d.durable, error=safe_error(e))
        return Outcome("dead_letter", error=safe_error(e, 500))
    return Outcome("ack")


def dead_letter_headers(headers: dict[str, str] | None, subject: str, durable: str, error: str,
                        delivered: int) -> dict[str, str]:
    out = dict(headers or {})
    out.pop(H_MSG_ID, None)
    out.update({"Voice-Dlq-Subject": subject, "Voice-Dlq-Consumer": durable,
                "Voice-Dlq-Error": error.replace("\n", " ")[:500], "Voice-Dlq-Deliveries": str(delivered)})
    return out


class DurableConsumer:
    """Pull loop over one durable consumer with bounded concurrency and the ack policy above."""

    # attempts at publishing a dead letter before giving up on this delivery
    DLQ_ATTEMPTS: ClassVar[tuple[float, ...]] = (0.0, 0.2, 1.0)

    def __init__(self, bus: Bus, d: ConsumerDef, handler: Handler) -> None:
        self.bus, self.d, self.handler = bus, d, handler
        self._sem = asyncio.Semaphore(d.concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._lag_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name=f"consume:{self.d.durable}")
        self._lag_task = asyncio.create_task(self._watch_lag(), name=f"lag:{self.d.durable}")

    async def _run(self) -> None:
        sub = await self.bus.js.pull_subscribe_bind(durable=self.d.durable, stream=self.d.stream)
        try:
            while not self._stopping.is_set():
                await self._sem.acquire()
                slots = 1
                while slots < self.d.concurrency and not self._sem.locked():
                    await self._sem.acquire()
                    slots += 1
                try:
                    msgs = await sub.fetch(batch=slots, timeout=1.0)
                except (TimeoutError, NatsTimeoutError):
                    msgs = []
                except Exception as e:
                    msgs = []
                    if not self._stopping.is_set():
                        log.warning("fetch_failed", consumer=self.d.durable, error=str(e))
                        await asyncio.sleep(0.5)
                for _ in range(slots - len(msgs)):
                    self._sem.release()
                for m in msgs:  # each task holds one slot until _handle releases it
                    t = asyncio.create_task(self._handle(m))
                    self._tasks.add(t)
                    t.add_done_callback(self._tasks.discard)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _watch_lag(self) -> None:
        while not self._stopping.is_set():
            try:
                info = await self.bus.js.consumer_info(self.d.stream, self.d.durable)
                metrics.CONSUMER_PENDING.labels(self.bus.service, self.d.durable).set(info.num_pending or 0)
                metrics.CONSUMER_ACK_PENDING.labels(self.bus.service, self.d.durable).set(
                    info.num_ack_pending or 0
                )
            except Exception:
                pass
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 5.0)

    async def _handle(self, msg: Msg) -> None:
        svc, name = self.bus.service, self.d.durable
        started = time.perf_counter()
        delivered = msg.metadata.num_delivered if msg.metadata else 1
        if delivered > 1:
            metrics.REDELIVERIES.labels(svc, name).inc()
        try:
            outcome = await deliver(self.d, svc, self.handler, msg.subject, msg.data, msg.headers, delivered)
            if outcome.action == "ack":
                try:
                    await msg.ack()
                except Exception as e:
                    # handled, but the ack was lost: JetStream redelivers after ack_wait and the idempotent
                    # handler sees it again. Never dead-letter a message that was handled.
                    metrics.ERRORS.labels(svc, "ack_failed").inc()
                    log.warning("ack_failed", consumer=name, error=str(e)[:200])
                metrics.EVENTS_HANDLED.labels(svc, name, "ack").inc()
            elif outcome.action == "nak":
                with contextlib.suppress(Exception):
                    await msg.nak(delay=outcome.delay_s)
                metrics.EVENTS_HANDLED.labels(svc, name, "nak").inc()
            else:
                await self._dead_letter(msg, outcome.error, delivered)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        finally:
            metrics.HANDLER_SECONDS.labels(svc, name).observe(time.perf_counter() - started)
            self._sem.release()

    async def _dead_letter(self, msg: Msg, error: str, delivered: int) -> None:
        """Copy to the dead-letter stream, then terminate. When the copy cannot be made, the message is not
        terminated: it is nak'ed while deliveries remain; on the last one it stays in its stream (limits
        retention) and the loss of the copy is logged with its stream sequence and counted."""
        headers = dead_letter_headers(msg.headers, msg.subject, self.d.durable, error, delivered)
        last_error = ""
        for pause in self.DLQ_ATTEMPTS:
            if pause:
                await asyncio.sleep(pause)
            try:
                await self.bus.js.publish(subjects.dead_letter(self.d.stream, self.d.durable), msg.data,
                                          headers=headers)
                break
            except Exception as e:
                last_error = str(e)[:200]
        else:
            metrics.ERRORS.labels(self.bus.service, "dead_letter_failed").inc()
            stream_seq = msg.metadata.sequence.stream if msg.metadata and msg.metadata.sequence else None
            if delivered < self.d.max_deliver:
                log.error("dead_letter_failed", consumer=self.d.durable, error=last_error, action="nak")
                with contextlib.suppress(Exception):
                    await msg.nak(delay=1.0)
            else:
                log.error("dead_letter_lost", consumer=self.d.durable, error=last_error, stream=self.d.stream,
                          stream_seq=stream_seq, subject=msg.subject)
            return
        with contextlib.suppress(Exception):
            await msg.term()
        metrics.DEAD_LETTERS.labels(self.bus.service, self.d.durable).inc()
        metrics.EVENTS_HANDLED.labels(self.bus.service, self.d.durable, "dead_letter").inc()

    async def stop(self, grace_s: float = 20.0) -> None:
        """Stop fetching, let in-flight handlers finish (up to grace), then cancel the rest."""
        self._stopping.set()
        if self._loop_task:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._loop_task, 2.0)
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
            for t in pending:
                t.cancel()
        if self._lag_task:
            self._lag_task.cancel()


__all__ = ["CONSUMERS", "Bus", "DurableConsumer", "NoResponders", "Outcome", "Poison", "Transient", "deliver"]
