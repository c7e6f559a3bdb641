"""The one way a service starts and stops.

A service is settings + a bus + hooks + declared handlers (``handlers.py``). ``run_service`` serves its HTTP
app (``/healthz``, ``/readyz``, ``/metrics`` plus any routes it adds) with uvicorn, whose lifespan connects to
NATS, provisions streams and buckets, calls ``on_start`` and then consumes the declared handlers; on
SIGTERM/SIGINT it stops taking work,
lets in-flight work finish (``shutdown_grace_s``) and drains the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, ClassVar

import uvicorn
from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from voice_schemas.streams import ConsumerDef

from .bus import Bus
from .handlers import EnvelopeHandler, Handlers, RawHandler, catching, declared_handlers, envelope_callback
from .logging import configure_logging, get_logger
from .ports import BusPort, Stoppable, Unsubscribable
from .realtime import freeze_heap, report_priority, watch_loop_lag
from .settings import CommonSettings
from .telemetry import setup_tracing

log = get_logger(__name__)


class Service:
    """Base class: subclasses set ``name``, declare ``Handlers`` and override ``on_start`` / ``on_stop`` /
    ``routes``. Every ``Handlers`` on the class is consumed after ``on_start`` (see ``handlers.py``)."""

    name: ClassVar[str] = "service"

    def __init__(self, settings: CommonSettings) -> None:
        self.settings = settings
        self.bus: BusPort | None = None
        self.kv: dict[str, Any] = {}
        self.ready = False
        self.stopping = False
        self._consumers: list[Stoppable] = []
        self._subs: list[Unsubscribable] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------ hooks
    async def on_start(self) -> None:
        """Subscribe, load models, start consumers. Called once the bus is up."""

    async def on_stop(self) -> None:
        """Stop taking new work (called before consumers finish in-flight work)."""

    async def check_ready(self) -> bool:
        return True

    def routes(self, app: FastAPI) -> None:
        """Add service routes to the HTTP app."""

    def consumer_for(self, handlers: Handlers) -> ConsumerDef:
        """The consumer provisioned for ``handlers``; override to tune it per replica (concurrency)."""
        return handlers.consumer()

    @classmethod
    def consumers(cls) -> list[Handlers]:
        return declared_handlers(cls)

    # ------------------------------------------------------------ helpers for subclasses
    async def consume(self, d: ConsumerDef, handler: EnvelopeHandler) -> Stoppable:
        assert self.bus is not None
        c = await self.bus.consume(d, handler)
        self._consumers.append(c)
        return c

    async def on_raw(self, subject: str, handler: RawHandler, *, per_call: bool = False) -> Unsubscribable:
        """A core subscription (broadcast to every replica) whose failures are logged, never raised.
        Service-wide ones are removed when the service stops; ``per_call`` ones by their owner."""
        assert self.bus is not None
        sub = await self.bus.subscribe(subject, catching(self.name, subject, handler))
        if not per_call:
            self._subs.append(sub)
        return sub

    async def on_events(self, subject: str, handler: EnvelopeHandler, *, per_call: bool = False,
                        queue: str = "") -> Unsubscribable:
        """A core subscription to JSON envelopes: parsed, failures logged; garbage is dropped here (the durable
        consumers of the same subjects dead-letter it). ``queue``: one replica of the group receives each."""
        assert self.bus is not None
        sub = await self.bus.subscribe(subject, envelope_callback(self.name, subject, handler), queue=queue)
        if not per_call:
            self._subs.append(sub)
        return sub

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        """A tracked background task, cancelled on shutdown."""
        t = asyncio.create_task(coro, name=name)
        self._tasks.add(t)
        t.add_done_callback(self._task_done)
        return t

    def _task_done(self, t: asyncio.Task[Any]) -> None:
        self._tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("background_task_failed", task=t.get_name(), error=repr(t.exception())[:300])

    # ------------------------------------------------------------ lifecycle
    async def start(self, bus: BusPort | None = None) -> None:
        """Connect (or use ``bus``, e.g. an ``InMemoryBus``), provision, ``on_start``, then consume."""
        s = self.settings
        declared = self.consumers()
        drift = [d for d in (h.drift() for h in declared) if d]
        if drift:
            raise RuntimeError("handlers and consumer filters differ: " + "; ".join(drift))
        setup_tracing(self.name, s.otel_exporter_otlp_endpoint)
        self.bus = bus if bus is not None else await Bus.connect(s.nats_url, self.name, placement=s.placement(),
                                                                  write_gap_s=s.bus_write_gap_ms / 1000)
        self.kv = await self.bus.provision()
        await self.on_start()
        for h in declared:
            await self.consume(self.consumer_for(h), h.bind(self))
        self.ready = True
        log.info("service_ready", port=s.http_port)

    async def stop(self) -> None:
        self.ready = False
        self.stopping = True
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        with contextlib.suppress(Exception):
            await self.on_stop()
        await asyncio.gather(
            *(c.stop(self.settings.shutdown_grace_s) for c in self._consumers), return_exceptions=True
        )
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2.0)
        if self.bus is not None:
            await self.bus.drain()
        log.info("service_stopped")

    def app(self) -> FastAPI:
        @contextlib.asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            await self.start()
            try:
                yield
            finally:
                await self.stop()

        app = FastAPI(title=f"voice {self.name}", lifespan=lifespan)
        health_routes(app, self)
        self.routes(app)
        return app


def health_routes(app: FastAPI, service: Service) -> None:
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": service.name}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(response: Response) -> dict[str, Any]:
        bus_ok = service.bus is not None and service.bus.connected
        ok = service.ready and bus_ok and await service.check_ready()
        response.status_code = 200 if ok else 503
        return {"ready": ok, "nats": bus_ok, "service": service.name}

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def run_service(factory: Callable[[], Service], *, ws: bool = False) -> None:
    """Entrypoint body shared by every service's ``__main__``."""
    service = factory()
    s = service.settings
    configure_logging(service.name, s.log_level, s.log_format, s.log_personal_data,
                      s.log_redaction_key.get_secret_value() if s.log_redaction_key else None)
    config = server_config(service.app(), s, ws=ws)
    with asyncio.Runner(loop_factory=event_loop_factory(s.event_loop)) as runner:
        runner.run(_serve(_Server(config), service.name, s.loop_lag_interval_ms / 1000))


def event_loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """``EVENT_LOOP``: uvloop's loop, or None for asyncio's own (also where uvloop is not installed: Windows)."""
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("uvloop_missing", detail="EVENT_LOOP=uvloop but uvloop is not installed: asyncio's loop runs")
            return None
        return uvloop.new_event_loop
    return None


def server_config(app: FastAPI, s: CommonSettings, *, ws: bool = False) -> uvicorn.Config:
    """How a service's HTTP (and, ``ws``, WebSocket) server runs."""
    return uvicorn.Config(
        app,
        host=s.http_host,
        port=s.http_port,
        log_config=None,
        access_log=False,
        # the client address comes from the socket; control-api trusts forwarded headers only from TRUSTED_PROXIES
        proxy_headers=False,
        lifespan="on",
        timeout_graceful_shutdown=int(s.shutdown_grace_s),
        ws="websockets-sansio" if ws else "auto",
        # no permessage-deflate: a media stream's messages are 20 ms of audio each (base64 in JSON, or binary),
        # which deflate barely shrinks while costing zlib work on every message, both ways, on the event loop
        # that paces every call's audio; a client that offers it (the bench's callers did) goes without
        ws_per_message_deflate=False,
    )


async def _serve(server: uvicorn.Server, name: str, lag_interval_s: float) -> None:
    """Serve, measuring the event loop's lag the whole time (README "Real-time work first")."""
    report_priority(name)
    lag = asyncio.create_task(watch_loop_lag(name, lag_interval_s), name="loop-lag") if lag_interval_s else None
    try:
        await server.serve()
    finally:
        if lag is not None:
            lag.cancel()


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after a graceful stop (exit status -15); a drained service exits 0. Once started
    (the service's own start done, the sockets bound), the heap built so far is frozen (``realtime.freeze_heap``)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            freeze_heap()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


