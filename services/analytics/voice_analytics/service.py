"""The analytics service: persists calls and turns from the bus (live analytics come later)."""

from __future__ import annotations

from typing import Any

import asyncpg
import voice_runtime.db as db
from voice_runtime.handlers import Handlers
from voice_runtime.service import Service
from voice_schemas import Envelope, events
from voice_schemas.streams import ANALYTICS_RECORDER

from . import recorder
from .recorder import CallRecorder
from .settings import AnalyticsSettings


class AnalyticsService(Service):
    name = "analytics"
    recorded = Handlers(ANALYTICS_RECORDER)

    def __init__(self, settings: AnalyticsSettings) -> None:
        super().__init__(settings)
        self.settings: AnalyticsSettings = settings
        self.pool: asyncpg.Pool | None = None
        self.recorder: CallRecorder | None = None

    async def on_start(self) -> None:
        self.pool = await db.connect(self.settings.database_url, max_size=5)
        self.recorder = CallRecorder(self.pool)

    async def _record(self, env: Envelope[Any], step: recorder.Step) -> None:
        assert self.recorder is not None
        await self.recorder.apply(env, step)

    @recorded.on(events.CallStarted)
    async def on_call_started(self, env: Envelope[events.CallStarted]) -> None:
        await self._record(env, recorder.call_started)

    @recorded.on(events.CallAnswered)
    async def on_call_answered(self, env: Envelope[events.CallAnswered]) -> None:
        await self._record(env, recorder.call_answered)

    @recorded.on(events.CallEnded)
    async def on_call_ended(self, env: Envelope[events.CallEnded]) -> None:
        await self._record(env, recorder.call_ended)

    @recorded.on(events.TurnCompleted)
    async def on_turn_completed(self, env: Envelope[events.TurnCompleted]) -> None:
        await self._record(env, recorder.turn_completed)

    async def check_ready(self) -> bool:
        return self.pool is not None

    async def stop(self) -> None:
        await super().stop()
        if self.pool is not None:
            await self.pool.close()
