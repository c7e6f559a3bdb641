"""The control-api service: PostgreSQL pool and migrations, bootstrap, the HTTP API, and the config it
pushes to JetStream KV (full resync at start, periodically, and soon after any failed write)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
from argon2 import PasswordHasher
from fastapi import FastAPI
from voice_runtime import db
from voice_runtime.logging import get_logger, safe_error
from voice_runtime.recordings import make_store
from voice_runtime.service import Service
from voice_schemas.streams import KV_AGENTS, KV_NUMBERS, KV_SECRETS, KV_TRUNKS

from .app import create_app
from .context import AppContext
from .kvsync import ConfigPublisher, ResyncReport
from .proxies import TrustedProxies
from .ratelimit import RateLimiter
from .security import AccessTokens, Passwords
from .settings import ControlApiSettings
from .usecases.bootstrap import bootstrap, first_run, signing_secret
from .usecases.dataplane import load_snapshot

log = get_logger(__name__)
RESYNC_RETRY_S = 5.0


class ControlApiService(Service):
    name = "control-api"

    def __init__(self, settings: ControlApiSettings) -> None:
        super().__init__(settings)
        self.settings: ControlApiSettings = settings
        self.pool: asyncpg.Pool | None = None
        self.ctx: AppContext | None = None
        self.publisher: ConfigPublisher | None = None
        self._resync_wanted: asyncio.Event | None = None

    def app(self) -> FastAPI:
        return create_app(self.settings, running=self.running, health=self)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[AppContext]:
        """The service started, as the context requests are served with; stopped on exit."""
        await self.start()
        try:
            assert self.ctx is not None
            yield self.ctx
        finally:
            await self.stop()

    async def on_start(self) -> None:
        s = self.settings
        self.pool = await db.connect(s.database_url, max_size=s.db_pool_max)
        try:
            await self._prepare(self.pool)
        except BaseException:
            await self.pool.close()
            self.pool = None
            raise
        self.spawn(self._reconcile_loop(), name="kv-reconcile")

    async def _prepare(self, pool: asyncpg.Pool) -> None:
        s = self.settings
        hasher = PasswordHasher(time_cost=s.password_hash_time_cost, memory_cost=s.password_hash_memory_kib)
        passwords = Passwords(hasher)
        await bootstrap(pool, s)
        await first_run(pool, s, passwords)
        self.publisher = ConfigPublisher(
            self.kv[KV_AGENTS.bucket], self.kv[KV_NUMBERS.bucket], self.kv[KV_SECRETS.bucket],
            self.kv.get(KV_TRUNKS.bucket),
        )
        self._resync_wanted = asyncio.Event()
        self.ctx = AppContext(
            settings=s,
            pool=pool,
            publisher=self.publisher,
            tokens=AccessTokens(await signing_secret(pool, s), s.access_token_ttl_s),
            passwords=passwords,
            limiter=RateLimiter(s.rate_limit_per_s, s.rate_limit_burst),
            request_resync=self._resync_wanted.set,
            proxies=TrustedProxies.parse(s.trusted_proxies, s.forwarded_header),
            egress=s.egress_policy(),
            secret_box=s.secret_box(),
            bus=self.bus,
            kv=self.kv,
            recordings=make_store(s),
            js=getattr(self.bus, "js", None),  # a real Bus (NATS); the in-memory bus has no JetStream
        )
        report = await self.resync()
        log.info(
            "kv_resynced",
            agents=report.agents_written,
            numbers=report.numbers_written,
            secrets=report.secrets_written,
            trunks=report.trunks_written,
            deleted=len(report.keys_deleted),
        )

    async def resync(self) -> ResyncReport:
        """Make the KV buckets match PostgreSQL."""
        assert self.publisher is not None and self.pool is not None
        pool = self.pool
        return await self.publisher.resync(lambda: load_snapshot(pool))

    async def _reconcile_loop(self) -> None:
        assert self._resync_wanted is not None
        interval = self.settings.kv_reconcile_interval_s or None
        while not self.stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._resync_wanted.wait(), timeout=interval)
            self._resync_wanted.clear()
            try:
                report = await self.resync()
                if (report.agents_written or report.numbers_written or report.secrets_written or report.trunks_written
                        or report.keys_deleted):
                    log.info(
                        "kv_repaired",
                        agents=report.agents_written,
                        numbers=report.numbers_written,
                        secrets=report.secrets_written,
                        trunks=report.trunks_written,
                        deleted=len(report.keys_deleted),
                    )
            except Exception as e:
                log.warning("kv_resync_failed", error=safe_error(e, 300))
                await asyncio.sleep(RESYNC_RETRY_S)
                self._resync_wanted.set()

    async def check_ready(self) -> bool:
        if self.pool is None:
            return False
        try:
            async with asyncio.timeout(2.0):
                await self.pool.fetchval("SELECT 1")
        except Exception:
            return False
        return True

    async def stop(self) -> None:
        await super().stop()
        if self.ctx is not None and self.ctx.recordings is not None:
            with contextlib.suppress(Exception):
                await self.ctx.recordings.close()
        if self.pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pool.close(), timeout=5.0)
            self.pool = None
        self.ctx = None
