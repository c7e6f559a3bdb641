"""The analytics service: persists calls and turns from the bus, scores live sentiment, summarises ended calls
(summary, KPIs, cost) and delivers webhooks."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import nats.errors
import voice_runtime.db as db
from voice_runtime.agents import AgentDirectory
from voice_runtime.bus import Later, Transient
from voice_runtime.handlers import Handlers
from voice_runtime.llm_endpoints import AgentEndpoints, LlmEndpoint
from voice_runtime.logging import get_logger
from voice_runtime.service import Service
from voice_schemas import Envelope, events
from voice_schemas.agent import LlmSettings
from voice_schemas.streams import (
    ANALYTICS_RECORDER,
    ANALYTICS_SENTIMENT,
    ANALYTICS_SUMMARIES,
    ANALYTICS_TOOLS,
    ANALYTICS_WEBHOOKS,
    KV_AGENTS,
    KV_NUMBERS,
    KV_SECRETS,
    WEBHOOK_EVENT_TYPES,
)

from . import recorder, sentiment, summaries, tools_ledger, webhooks
from .recorder import CallRecorder
from .recording import RecordingService
from .settings import AnalyticsSettings
from .summarizer import SUMMARIES, Summarizer, SummaryLimits

log = get_logger(__name__)


class AnalyticsService(RecordingService, Service):
    name = "analytics"
    recorded = Handlers(ANALYTICS_RECORDER)
    webhook_events = Handlers(ANALYTICS_WEBHOOKS)
    scored = Handlers(ANALYTICS_SENTIMENT)
    tool_ledger = Handlers(ANALYTICS_TOOLS)
    summarized = Handlers(ANALYTICS_SUMMARIES)

    def __init__(self, settings: AnalyticsSettings) -> None:
        super().__init__(settings)
        self.settings: AnalyticsSettings = settings
        self.pool: asyncpg.Pool | None = None
        self.recorder: CallRecorder | None = None
        self.delivery: webhooks.WebhookDelivery | None = None
        self.scorer = sentiment.Scorer()
        self._directory: AgentDirectory | None = None
        self.summarizer: Summarizer | None = None

    async def on_start(self) -> None:
        self.pool = await db.connect(self.settings.database_url, max_size=5)
        self.recorder = CallRecorder(self.pool)
        await self.start_recording(self.pool)
        await self._start_webhook_delivery(self.pool)
        s = self.settings
        endpoints = AgentEndpoints(platform=LlmEndpoint(s.summary_endpoint(), s.llm_api_key.get_secret_value()),
                                   egress=s.egress_policy(), box=s.secret_box(), secrets=self.kv[KV_SECRETS.bucket])
        self.summarizer = Summarizer(endpoints, s.llm_model, SummaryLimits(
            timeout_s=s.summary_timeout_s, max_tokens=s.summary_max_tokens, temperature=s.summary_temperature,
            transcript_chars=s.summary_transcript_chars))

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

    @tool_ledger.on(events.ToolCallRequested, events.ToolApprovalRequested, events.ToolApprovalDecided,
                    events.ToolResultReturned)
    async def on_tool_event(self, env: Envelope[Any]) -> None:
        """The tool-call ledger (``tools_ledger``): calls, approvals and their decisions, results."""
        assert self.pool is not None
        await tools_ledger.record(self.pool, env)

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

    @summarized.on(events.CallEnded)
    async def summarize_call(self, env: Envelope[events.CallEnded]) -> None:
        """Once the call has settled: its summary, KPIs and cost, stored once, then ``analytics.summary``."""
        assert self.pool is not None and self.bus is not None and self.summarizer is not None
        settle = self.settings.summary_settle_s
        wait = settle - (datetime.now(UTC) - env.occurred_at).total_seconds()
        if wait > 0:
            raise Later(min(wait, settle))  # a clock ahead of ours never holds the call longer than the settle time
        done = await summaries.stored(self.pool, env.call_id)
        if done is None:
            facts = await summaries.load(self.pool, env.call_id)
            if facts is None:
                raise Transient("the call's end is not recorded yet")
            agent = await self._agents().version(facts.agent_id, facts.agent_version)
            llm = agent.llm if agent is not None else LlmSettings()
            summary = await self.summarizer.summarize(facts.tenant_id, llm, facts.lines, facts.end_reason,
                                                      facts.caller_rolling)
            done = await summaries.store(self.pool, facts, summary, *summaries.measure(facts))
            SUMMARIES.labels(summary.source).inc()
            log.info("call_summarized", call_id=env.call_id, source=summary.source, disposition=summary.disposition)
        try:
            await self.bus.publish(summaries.event_of(done))
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
