"""The analytics service: persists calls and turns from the bus (live analytics come later)."""

from __future__ import annotations

from typing import Any

import asyncpg
import nats.errors
import voice_runtime.db as db
from voice_runtime.agents import AgentDirectory
from voice_runtime.bus import Transient
from voice_runtime.handlers import Handlers
from voice_runtime.logging import get_logger
from voice_runtime.service import Service
from voice_schemas import Envelope, events
from voice_schemas.streams import (
    ANALYTICS_RECORDER,
    ANALYTICS_SENTIMENT,
    ANALYTICS_WEBHOOKS,
    KV_AGENTS,
    KV_NUMBERS,
    WEBHOOK_EVENT_TYPES,
)

from . import recorder, sentiment, webhooks
from .recorder import CallRecorder
from .recording import RecordingService
from .settings import AnalyticsSettings

log = get_logger(__name__)


class AnalyticsService(RecordingService, Service):
    name = "analytics"
    recorded = Handlers(ANALYTICS_RECORDER)
    webhook_events = Handlers(ANALYTICS_WEBHOOKS)
    scored = Handlers(ANALYTICS_SENTIMENT)

    def __init__(self, settings: AnalyticsSettings) -> None:
        super().__init__(settings)
        self.settings: AnalyticsSettings = settings
        self.pool: asyncpg.Pool | None = None
        self.recorder: CallRecorder | None = None
        self.delivery: webhooks.WebhookDelivery | None = None
        self.scorer = sentiment.Scorer()
        self._directory: AgentDirectory | None = None

    async def on_start(self) -> None:
        self.pool = await db.connect(self.settings.database_url, max_size=5)
        self.recorder = CallRecorder(self.pool)
        await self.start_recording(self.pool)
        await self._start_webhook_delivery(self.pool)

    async def _start_webhook_delivery(self, pool: asyncpg.Pool) -> None:
        """Seal readable secrets, then deliver; without SECRETS_KEY deliveries are queued but not sent."""
        s = self.settings
        box = s.secret_box()
        if box is None:
            log.warning("webhook_delivery_off", reason="SECRETS_KEY is unset")
            return
        await webhooks.seal_readable_secrets(pool, box)
        self.delivery = webhooks.WebhookDelivery(
            pool,
            box,
            s.egress_policy(),
            webhooks.DeliverySettings(
                retry_scale=s.webhook_retry_scale,
                retry_jitter=s.webhook_retry_jitter,
                retry_after_max_s=s.webhook_retry_after_max_s,
                timeout_s=s.webhook_timeout_s,
                poll_interval_s=s.webhook_poll_interval_s,
                batch=s.webhook_batch,
            ),
        )
        self.spawn(self.delivery.run(), name="webhook-delivery")

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

    @webhook_events.on(*WEBHOOK_EVENT_TYPES)
    async def on_webhook_event(self, env: Envelope[Any]) -> None:
        assert self.pool is not None
        if await webhooks.enqueue(self.pool, env) and self.delivery is not None:
            self.delivery.wake()

    @scored.on(events.TranscriptFinalized)
    async def on_transcript_final(self, env: Envelope[events.TranscriptFinalized]) -> None:
        """Score the caller's utterance, store it, publish ``analytics.sentiment`` (and ``sentiment.alert``)."""
        assert self.pool is not None and self.bus is not None
        if not env.data.text.strip():
            return
        async with self.pool.acquire() as conn:
            agent_id, version = await sentiment.agent_of(conn, env.call_id)
        threshold = sentiment.DEFAULT_THRESHOLD
        agent = await self._agents().version(agent_id, version)
        if agent is not None:
            threshold = agent.sentiment_alert_threshold
        result = await sentiment.record(self.pool, env, self.scorer.compound(env.data.text), threshold)
        try:
            for out in sentiment.events_of(env, result):
                await self.bus.publish(out)
        except (TimeoutError, OSError, nats.errors.Error) as e:
            raise Transient(f"publish failed: {e}") from e  # stored already: the redelivery re-publishes

    def _agents(self) -> AgentDirectory:
        if self._directory is None:
            self._directory = AgentDirectory(self.kv[KV_AGENTS.bucket], self.kv[KV_NUMBERS.bucket], self.settings)
        return self._directory

    async def check_ready(self) -> bool:
        return self.pool is not None

    async def stop(self) -> None:
        await super().stop()
        await self.stop_recording()
        if self.delivery is not None:
            await self.delivery.close()
        if self.pool is not None:
            await self.pool.close()
