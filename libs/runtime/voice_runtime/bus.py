"""NATS / JetStream runtime: connection, provisioning, publishing and durable consumers.

Ack policy (explicit on every consumer, never a library default):
- handler returns            -> ack
- handler raises Transient   -> nak with the consumer's backoff delay (redelivered, bounded by MaxDeliver); so does
  a NATS outage seen by the handler (a server restarting, a stream electing a new leader: ``NATS_UNAVAILABLE``)
- handler raises Later       -> nak with the delay it names: not a failure, a durable timer (the message comes back
  to whichever replica is alive then); each return counts as a delivery, so its consumer's MaxDeliver must allow
  the returns (the handler passes the whole remaining wait, so one or two suffice)
- any other exception, or a message that does not parse (Poison) -> copied to ``dlq.<stream>.<consumer>``
  with the error in headers, then ``term`` (never redelivered)
- last allowed delivery fails transiently -> dead-lettered too, so nothing is silently lost

Outages: the connection reconnects forever (every server of ``NATS_URL`` in turn); pull loops keep going through
failed fetches; a durable publish is retried with the same ``Nats-Msg-Id`` until its time is up (the server's
duplicate window makes the retry exactly-once); provisioning waits for JetStream at start. Replicas and storage
of streams and buckets come from the deployment (``Placement``); see ``ensure_stream`` for how an existing stream
that differs is treated.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import (
    ConnectionReconnectingError,
    NoRespondersError,
    OutboundBufferLimitError,
    StaleConnectionError,
)
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.errors import APIError, BadRequestError, NoStreamResponseError, NotFoundError, ServiceUnavailableError
from nats.js.kv import KeyValue
from opentelemetry import trace
from pydantic import ValidationError
from voice_schemas import Envelope, UnknownEventType, parse, subjects
from voice_schemas.streams import CONSUMERS, KV_BUCKETS, STREAMS, ConsumerDef, KvDef, Placement, StreamDef

from . import metrics, telemetry
from .handlers import EnvelopeHandler as Handler
from .handlers import RawHandler, delivery
from .logging import get_logger, safe_error

log = get_logger(__name__)
_tracer = trace.get_tracer("voice.bus")

H_MSG_ID = "Nats-Msg-Id"


class PacedClient(NATS):
    """nats-py's client, writing to the socket at most once per ``write_gap_s`` while it is busy.

    nats-py queues each publish and wakes its flusher task, which writes everything queued: one ``send`` per
    event-loop pass in which something was published. Ingress publishes every call's caller audio (50 frames a
    second per call, each from its own WebSocket's task), so at tens of calls it made thousands of small writes a
    second; on loopback each write also runs the server's receive path (the profile of `make bench-capacity` at
    50 calls: a fifth of ingress's CPU in that ``send``), and nats-server then reads, and delivers, as many small
    batches. Here a write that comes less than ``write_gap_s`` after the previous one waits out the rest of the gap,
    so that everything published meanwhile goes in the same write. A write after a quiet spell goes at once: an
    idle service adds no latency, a busy one at most the gap.

    ``_flusher`` is nats-py's own loop (as of 2.16) with the wait added; ``tests/test_bus_pacing.py`` checks it
    against a real server.
    """

    write_gap_s: float = 0.0

    async def _flusher(self) -> None:
        assert self._transport, "Client.connect must be called first"
        assert self._flush_queue, "Client.connect must be called first"
        loop = asyncio.get_running_loop()
        last_write = -1e9
        while True:
            if not self.is_connected or self.is_connecting:
                break
            future: asyncio.Future[Any] = await self._flush_queue.get()
            try:
                wait = last_write + self.write_gap_s - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if self._pending_data_size > 0:
                    self._transport.writelines(self._pending[:])
                    self._pending = []
                    self._pending_data_size = 0
                    last_write = loop.time()
                    await self._transport.drain()
            except OSError as e:
                await self._error_cb(e)
                await self._process_op_err(e)
                break
            except (asyncio.CancelledError, RuntimeError, AttributeError):
                break
            finally:
                if not future.done():
                    future.set_result(None)


class Transient(Exception):
    """A failure worth retrying (dependency down, timeout). The message is nak'ed with backoff."""


class Later(Exception):
    """Not yet: redeliver this message after ``delay_s`` (a durable timer that survives the replica)."""

    def __init__(self, delay_s: float) -> None:
        super().__init__(f"later, in {delay_s:.1f} s")
        self.delay_s = max(0.0, delay_s)


class NotMine(Exception):
    """This copy of the message is not this replica's to settle (another replica may be working on it): neither ack
    nor nak. Should nobody settle it, JetStream delivers it again once its ack wait runs out."""


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


class ProvisionError(RuntimeError):
    """The streams cannot be provisioned as this deployment asks (e.g. 3 replicas on a server that is not
    clustered)."""


# what NATS raises while a server restarts or a stream elects a new leader: retried, never poison
NATS_UNAVAILABLE: tuple[type[Exception], ...] = (
    NatsTimeoutError, NoRespondersError, NoStreamResponseError, ServiceUnavailableError, ConnectionReconnectingError,
    OutboundBufferLimitError, StaleConnectionError,
)
# JetStream's error code for "replicas > 1 not supported in non-clustered mode"
ERR_REPLICAS_NOT_CLUSTERED = 10074


def _storage_name(storage: jsapi.StorageType | None) -> str:
    return "memory" if storage == jsapi.StorageType.MEMORY else "file"


@dataclass(frozen=True)
class Reconciled:
    """What provisioning applies to an existing stream, and what it could not (logged, never silently)."""

    stream: StreamDef
    raised_from: int | None = None  # replicas raised from this count
    kept_replicas: int | None = None  # the stream has more replicas than asked: kept
    kept_storage: str | None = None  # the stream's storage differs from what is asked: kept (NATS cannot change it)


def reconcile(want: StreamDef, replicas: int, storage: str) -> Reconciled:
    """The configuration to apply to an existing stream that has ``replicas`` and ``storage``. Replicas are raised
    to the deployment's count but never lowered at start (a service started with the default of 1 against a
    cluster must not strip its streams of their copies; lower them by hand with ``nats stream edit --replicas``).
    Storage is kept: NATS cannot change it on an existing stream (delete the stream to switch)."""
    out = want
    kept_storage = None
    if storage != want.storage:
        kept_storage = storage
        out = replace(out, storage="memory" if storage == "memory" else "file")
    if replicas > want.replicas:
        return Reconciled(replace(out, replicas=replicas), kept_replicas=replicas, kept_storage=kept_storage)
    return Reconciled(out, raised_from=replicas if replicas < want.replicas else None, kept_storage=kept_storage)


def _not_clustered(replicas: int) -> ProvisionError:
    return ProvisionError(
        f"NATS_REPLICAS={replicas} needs a NATS cluster of at least {replicas} servers, and the server at NATS_URL "
        "is not clustered: set NATS_REPLICAS=1 for a single server (or NATS_CLUSTER=3 for `make run`)"
    )




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
        # num_replicas left unset (0): the consumer has its stream's replicas, and follows it when they change
    )


def _kv_config(d: KvDef) -> jsapi.KeyValueConfig:
    return jsapi.KeyValueConfig(
        bucket=d.bucket,
        description=d.description,
        history=d.history,
        ttl=d.ttl_s or None,
        storage=jsapi.StorageType.FILE if d.storage == "file" else jsapi.StorageType.MEMORY,
        max_value_size=d.max_value_size,
        replicas=d.replicas,
    )


# how long one try of a durable publish waits for its ack before trying again (the connection may have moved to
# another server meanwhile); the caller's timeout bounds all the tries together
PUBLISH_TRY_S = 1.0
PUBLISH_FIRST_PAUSE_S = 0.05  # then doubled up to 0.5 s between tries
# a durable publish's default time to get an ack: more than a stream's leader election after its leader's server
# died (about 6 s on a local 3-server cluster, tests/resilience/test_nats_cluster.py) and a single server's restart
PUBLISH_TIMEOUT_S = 15.0


@dataclass
class Bus:
    """One NATS connection per process, with JetStream and KV handles."""

    nc: NATS
    js: JetStreamContext
    service: str
    placement: Placement = field(default_factory=Placement)

    @classmethod
    async def connect(
        cls, url: str, service: str, *, connect_timeout: float = 5.0, initial_wait_s: float = 60.0,
        placement: Placement | None = None, write_gap_s: float = 0.0,
    ) -> Bus:
        """``write_gap_s``: see ``PacedClient`` (0: nats-py's own pace, a write per loop pass)."""
        async def on_error(e: Exception) -> None:
            log.warning("nats_error", error=str(e))

        async def on_disconnect() -> None:
            log.warning("nats_disconnected")

        async def on_reconnect() -> None:
            log.info("nats_reconnected")

        deadline = time.monotonic() + initial_wait_s
        while True:  # the server may start after us (k8s, make run): retry the first connect
            try:
                nc = await cls._connect(url, service, connect_timeout, on_error, on_disconnect, on_reconnect,
                                        write_gap_s)
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
        return cls(nc=nc, js=nc.jetstream(timeout=5.0), service=service, placement=placement or Placement())

    @staticmethod
    async def _connect(url: str, service: str, connect_timeout: float, on_error: Any, on_disconnect: Any,
                       on_reconnect: Any, write_gap_s: float = 0.0) -> NATS:
        nc = PacedClient()
        nc.write_gap_s = write_gap_s
        options: dict[str, Any] = {  # (as nats.connect passes them: its stubs say int for the two times)
            "servers": [u.strip() for u in url.split(",")], "name": service, "connect_timeout": connect_timeout,
            "reconnect_time_wait": 0.5, "max_reconnect_attempts": -1, "allow_reconnect": True,
            "error_cb": on_error, "disconnected_cb": on_disconnect, "reconnected_cb": on_reconnect,
        }
        await nc.connect(**options)
        return nc

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    # ------------------------------------------------------------ provisioning (idempotent)
    async def ensure_stream(self, d: StreamDef) -> None:
        """Create ``d`` as this deployment places it, or bring the existing stream to the definition: its
        replicas are raised to ``NATS_REPLICAS`` (never lowered) and its storage is kept (see ``reconcile``)."""
        want = self.placement.stream(d)
        try:
            info = await self.js.stream_info(d.name)
        except NotFoundError:
            try:
                await self.js.add_stream(_stream_config(want))
                return
            except BadRequestError:  # raced with another replica
                info = await self.js.stream_info(d.name)
        r = reconcile(want, info.config.num_replicas or 1, _storage_name(info.config.storage))
        if r.kept_storage:
            log.warning("stream_storage_kept", stream=d.name, storage=r.kept_storage, asked=want.storage,
                        reason="NATS cannot change a stream's storage; delete the stream to switch")
        if r.kept_replicas:
            log.warning("stream_replicas_kept", stream=d.name, replicas=r.kept_replicas, asked=want.replicas,
                        reason="never lowered at start; lower by hand with `nats stream edit --replicas`")
        await self.js.update_stream(_stream_config(r.stream))
        if r.raised_from:
            log.info("stream_replicas_raised", stream=d.name, replicas=want.replicas, was=r.raised_from)

    async def ensure_kv(self, d: KvDef) -> KeyValue:
        want = self.placement.bucket(d)
        try:
            kv = await self.js.key_value(d.bucket)
        except NATS_UNAVAILABLE:
            raise
        except Exception:
            try:
                return await self.js.create_key_value(_kv_config(want))
            except BadRequestError:
                kv = await self.js.key_value(d.bucket)
        await self._place_bucket(want)
        return kv

    async def _place_bucket(self, want: KvDef) -> None:
        """An existing bucket's replicas are raised to ``NATS_REPLICAS``, never lowered (as for streams); its TTL
        follows the definition (the liveness bucket's TTL is how fast a dead replica is noticed)."""
        stream = f"KV_{want.bucket}"
        cfg = (await self.js.stream_info(stream)).config
        if want.ttl_s and abs((cfg.max_age or 0.0) - want.ttl_s) > 1e-3:
            was, cfg.max_age = cfg.max_age, want.ttl_s
            await self.js.update_stream(cfg)
            log.info("bucket_ttl_changed", bucket=want.bucket, ttl_s=want.ttl_s, was=was)
        have = cfg.num_replicas or 1
        if have < want.replicas:
            cfg.num_replicas = want.replicas
            await self.js.update_stream(cfg)
            log.info("stream_replicas_raised", stream=stream, replicas=want.replicas, was=have)
        elif have > want.replicas:
            log.warning("stream_replicas_kept", stream=stream, replicas=have, asked=want.replicas,
                        reason="never lowered at start; lower by hand with `nats stream edit --replicas`")

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
        *,
        wait_s: float = 60.0,
    ) -> dict[str, KeyValue]:
        """Streams, buckets and consumers as defined, placed as this deployment asks. A service may start before
        JetStream is ready (a cluster elects its meta leader first, a restarted server recovers its streams):
        unavailable answers are retried for up to ``wait_s``."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return await self._provision(streams, buckets, consumers)
            except NATS_UNAVAILABLE as e:
                if time.monotonic() > deadline:
                    raise
                log.info("provision_waiting", error=safe_error(e, 200))
                await asyncio.sleep(0.5)
            except APIError as e:
                if e.err_code == ERR_REPLICAS_NOT_CLUSTERED:
                    raise _not_clustered(self.placement.replicas) from e
                raise

    async def _provision(
        self, streams: tuple[StreamDef, ...], buckets: tuple[KvDef, ...], consumers: tuple[ConsumerDef, ...]
    ) -> dict[str, KeyValue]:
        for s in streams:
            await self.ensure_stream(s)
        kvs = {b.bucket: await self.ensure_kv(b) for b in buckets}
        for c in consumers:
            await self.ensure_consumer(c)
        return kvs

    # ------------------------------------------------------------ publishing
    async def publish(self, env: Envelope[Any], *, timeout: float = PUBLISH_TIMEOUT_S) -> jsapi.PubAck:
        """Publish a durable event: JetStream, Nats-Msg-Id = event id, traceparent from the current span. While
        NATS is unavailable (a server restarting, a stream electing a new leader) it is tried again with the same
        id until ``timeout`` is spent: the stream's duplicate window stores it once however many tries reached
        it. Raises one of ``NATS_UNAVAILABLE`` when the time ran out."""
        headers = telemetry.inject({H_MSG_ID: env.id})
        subject = env.subject
        ack = await self._publish_durable(subject, env.to_bytes(), headers, timeout)
        metrics.EVENTS_PUBLISHED.labels(self.service, subjects.pattern_of(subject)).inc()
        return ack

    async def _publish_durable(self, subject: str, data: bytes, headers: dict[str, str],
                               timeout: float) -> jsapi.PubAck:
        deadline = time.monotonic() + timeout
        pause = PUBLISH_FIRST_PAUSE_S
        while True:
            try_s = max(0.05, min(deadline - time.monotonic(), PUBLISH_TRY_S))
            try:
                return await self.js.publish(subject, data, headers=headers, timeout=try_s)
            except NATS_UNAVAILABLE as e:
                if deadline - time.monotonic() <= pause:
                    raise
                if pause == PUBLISH_FIRST_PAUSE_S:  # once per publish, not per try
                    log.info("publish_waiting", subject=subjects.pattern_of(subject), error=safe_error(e, 200))
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.5)

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

    async def replay(self, stream: str, subject: str, since_wall_ms: float, *, limit: int,
                     timeout: float = 5.0) -> list[tuple[dict[str, str], bytes]]:
        """The stream's messages on ``subject`` stored since a wall-clock instant, up to the stream's end now (at
        most ``limit``, the newest kept): ``(headers, data)`` in order. An ephemeral pull consumer (never acked:
        it is read once and deleted after use)."""
        start = datetime.fromtimestamp(since_wall_ms / 1000, UTC)
        cfg = jsapi.ConsumerConfig(deliver_policy=jsapi.DeliverPolicy.BY_START_TIME, opt_start_time=start,
                                   ack_policy=jsapi.AckPolicy.EXPLICIT, inactive_threshold=10.0, mem_storage=True,
                                   max_ack_pending=-1)
        sub = await self.js.pull_subscribe(subject, stream=stream, config=cfg)
        out: list[tuple[dict[str, str], bytes]] = []
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                try:
                    msgs = await sub.fetch(batch=256, timeout=0.5)
                except (TimeoutError, NatsTimeoutError):
                    break  # nothing (more) stored since then
                for m in msgs:
                    out.append((dict(m.headers or {}), m.data))
                if len(out) > limit:
                    del out[: len(out) - limit]
                last = msgs[-1].metadata if msgs else None
                if last is None or not last.num_pending:
                    break
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return out

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

    action: Literal["ack", "nak", "dead_letter", "leave"]
    delay_s: float = 0.0
    error: str = ""


# failures the ack policy retries with backoff: the handler's own, and NATS outages the handler ran into
RETRYABLE: tuple[type[Exception], ...] = (Transient, *NATS_UNAVAILABLE)


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
    except NotMine:
        return Outcome("leave")
    except Later as e:
        if delivered >= d.max_deliver:
            return Outcome("dead_letter", error=f"still not due after {delivered} deliveries"[:500])
        return Outcome("nak", delay_s=e.delay_s)
    except RETRYABLE as e:
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
    # how long one pull waits for a message before asking again
    FETCH_WAIT_S: ClassVar[float] = 1.0

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
                # one message a pull, handed on the moment it comes: a pull for a batch returns when the batch is
                # full or its wait ends, and fetch(16) held messages that came in pairs 15 ms apart (a call's
                # CallStarted and CallAnswered, a reply's chunks) for up to the 1 s wait: p90 281 ms, max 802 ms
                # against max 2.7 ms one at a time (tests/unit/test_consumer_pull.py). A pull is one small request
                # to the server; handlers still run up to ``concurrency`` at once, each holding a slot until done.
                await self._sem.acquire()
                try:
                    msgs = await sub.fetch(batch=1, timeout=self.FETCH_WAIT_S)
                except (TimeoutError, NatsTimeoutError):
                    msgs = []
                except Exception as e:
                    msgs = []
                    if not self._stopping.is_set():
                        log.warning("fetch_failed", consumer=self.d.durable, error=str(e))
                        await asyncio.sleep(0.5)
                if not msgs:
                    self._sem.release()
                for m in msgs:  # the task holds the slot until _handle releases it
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
        beat = asyncio.create_task(self._heartbeat(msg)) if self.d.heartbeat_s else None
        try:
            try:
                outcome = await deliver(self.d, svc, self.handler, msg.subject, msg.data, msg.headers, delivered)
            finally:
                if beat is not None:
                    beat.cancel()
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
            elif outcome.action == "leave":
                metrics.EVENTS_HANDLED.labels(svc, name, "leave").inc()
            else:
                await self._dead_letter(msg, outcome.error, delivered)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        finally:
            metrics.HANDLER_SECONDS.labels(svc, name).observe(time.perf_counter() - started)
            self._sem.release()

    async def _heartbeat(self, msg: Msg) -> None:
        """While the handler works, tell JetStream so (``+WPI``) every ``heartbeat_s``: the consumer's ack wait can
        then be short, so a message whose replica died (no more heartbeats) goes to another one within that wait,
        however long a live handler takes."""
        every = self.d.heartbeat_s or 1.0
        while True:
            await asyncio.sleep(every)
            with contextlib.suppress(Exception):
                await msg.in_progress()

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


__all__ = ["CONSUMERS", "NATS_UNAVAILABLE", "Bus", "DurableConsumer", "Later", "NoResponders", "Outcome", "Poison",
           "ProvisionError", "Transient",
           "deliver"]
