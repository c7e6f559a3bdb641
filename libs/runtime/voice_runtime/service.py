"""The one way a service starts and stops.

A service is settings + a bus + hooks. ``run_service`` serves its HTTP app (``/healthz``,
``/readyz``, ``/metrics`` plus any routes it adds) with uvicorn, whose lifespan connects to NATS,
provisions what the service owns and calls ``on_start``; on SIGTERM/SIGINT it stops taking work,
lets in-flight work finish (``shutdown_grace_s``) and drains the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, ClassVar

import uvicorn
from fastapi import FastAPI, Response
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from voice_schemas.streams import ConsumerDef

from .bus import Bus, DurableConsumer, Handler
from .logging import configure_logging, get_logger
from .settings import CommonSettings
from .telemetry import setup_tracing

log = get_logger(__name__)


class Service:
    """Base class: subclasses set ``name`` and override ``on_start`` / ``on_stop`` / ``routes``."""

    name: ClassVar[str] = "service"
    # consumers this service owns (provisioned at start)
    owns_consumers: ClassVar[tuple[ConsumerDef, ...]] = ()

    def __init__(self, settings: CommonSettings) -> None:
        self.settings = settings
        self.bus: Bus | None = None
        self.kv: dict[str, KeyValue] = {}
        self.ready = False
        self.stopping = False
        self._consumers: list[DurableConsumer] = []
        self._subs: list[Subscription] = []
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

    # ------------------------------------------------------------ helpers for subclasses
    async def consume(self, d: ConsumerDef, handler: Handler) -> DurableConsumer:
        assert self.bus is not None
        c = await self.bus.consume(d, handler)
        self._consumers.append(c)
        return c

    async def subscribe(self, subject: str, cb: Callable[[Msg], Awaitable[None]]) -> Subscription:
        """A core NATS subscription (broadcast to every replica), removed when the service stops."""
        assert self.bus is not None
        sub = await self.bus.nc.subscribe(subject, cb=cb)
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
    async def start(self) -> None:
        s = self.settings
        setup_tracing(self.name, s.otel_exporter_otlp_endpoint)
        self.bus = await Bus.connect(s.nats_url, self.name)
        self.kv = await self.bus.provision(consumers=self.owns_consumers)
        await self.on_start()
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
    configure_logging(service.name, s.log_level, s.log_format, s.log_personal_data)
    config = uvicorn.Config(
        service.app(),
        host=s.http_host,
        port=s.http_port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=int(s.shutdown_grace_s),
        ws="websockets-sansio" if ws else "auto",
    )
    asyncio.run(_Server(config).serve())


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after a graceful stop (exit status -15); a drained service exits 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


