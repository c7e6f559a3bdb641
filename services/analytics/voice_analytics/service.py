"""The analytics service: persists calls and transcripts from the bus (live analytics come later)."""

from __future__ import annotations

from typing import Any

import asyncpg
import voice_runtime.db as db
from nats.aio.msg import Msg
from voice_runtime.service import Service
from voice_schemas import Envelope
from voice_schemas.streams import ANALYTICS_RECORDER

from .recorder import CallRecorder
from .settings import AnalyticsSettings


class AnalyticsService(Service):
    name = "analytics"
    owns_consumers = (ANALYTICS_RECORDER,)

    def __init__(self, settings: AnalyticsSettings) -> None:
        super().__init__(settings)
        self.settings: AnalyticsSettings = settings
        self.pool: asyncpg.Pool | None = None
        self.recorder: CallRecorder | None = None

    async def on_start(self) -> None:
        self.pool = await db.connect(self.settings.database_url, max_size=5)
        self.recorder = CallRecorder(self.pool)
        await self.consume(ANALYTICS_RECORDER, self.handle)

    async def handle(self, env: Envelope[Any], msg: Msg) -> None:
        assert self.recorder is not None
        await self.recorder.apply(env)

    async def check_ready(self) -> bool:
        return self.pool is not None

    async def on_stop(self) -> None:
        pass

    async def stop(self) -> None:
        await super().stop()
        if self.pool is not None:
            await self.pool.close()
