"""After a call: summary, KPIs and cost are stored once per call and published as ``analytics.summary``.

Real NATS (a server of this module's own), PostgreSQL, the analytics service as it runs, and the scripted
OpenAI-compatible server over real HTTP as the platform's model. A call's events are published as the services
publish them; a turn that arrives just after ``call.ended`` still counts (the summary waits ``SUMMARY_SETTLE_S``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from voice_analytics import csat
from voice_analytics.service import AnalyticsService
from voice_analytics.settings import AnalyticsSettings
from voice_devstack.stack import embedded_nats
from voice_runtime.bus import Bus
from voice_schemas import AgentConfig, Envelope, events, make, parse, subjects
from voice_schemas.streams import ANALYTICS_SUMMARIES, KV_AGENTS

from ..brain.fake_openai import FakeOpenAI, Script
from ..waiting import until

pytestmark = pytest.mark.integration

TENANT = "tenant-summaries"
AGENT = AgentConfig(id="agent-summaries", tenant_id=TENANT, version=2)
PLATFORM_KEY = "sk-platform-summary"
PRICES = {
    "currency": "EUR",
    "telephony_per_minute": Decimal("0.0085"),
    "stt_per_minute": Decimal("0.006"),
    "llm_input_per_1k_tokens": Decimal("0.5"),
    "llm_output_per_1k_tokens": Decimal("1.5"),
    "tts_per_1k_chars": Decimal("0.015"),
}
ANSWER = {"summary": "The caller moved their appointment to Monday.", "disposition": "resolved",
          "tags": ["appointment", "reschedule"]}


@dataclass
class World:
    bus: Bus
    db: asyncpg.Connection
    llm: FakeOpenAI


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeOpenAI]:
    f = FakeOpenAI()
    f.start()
    yield f
    f.stop()


@pytest.fixture(scope="module")
async def world(database_url: str, llm: FakeOpenAI) -> AsyncIterator[World]:
    with embedded_nats() as nats_url:
        svc = AnalyticsService(AnalyticsSettings(
            nats_url=nats_url, database_url=database_url, llm_api_key=PLATFORM_KEY,
            # summaries have their own endpoint: the agents' (closed port) is never asked
            llm_base_url="http://127.0.0.1:9/v1", summary_llm_base_url=llm.base_url,
            llm_model="summary-model", summary_settle_s=1.5, summary_timeout_s=5.0, summary_max_tokens=200,
            log_level="WARNING", shutdown_grace_s=1.0))
        await svc.start()
        bus = await Bus.connect(nats_url, "test")
        kv = await bus.provision()
        await kv[KV_AGENTS.bucket].put(subjects.agent_version_key(AGENT.id, AGENT.version),
                                       AGENT.model_dump_json().encode())
        db = await asyncpg.connect(database_url)
        await db.execute("INSERT INTO tenants (id, name) VALUES ($1, 'Summaries') ON CONFLICT DO NOTHING", TENANT)
        await db.execute(
            "INSERT INTO tenant_prices (tenant_id, currency, telephony_per_minute, stt_per_minute,"
            " llm_input_per_1k_tokens, llm_output_per_1k_tokens, tts_per_1k_chars) VALUES ($1,$2,$3,$4,$5,$6,$7)"
            " ON CONFLICT (tenant_id) DO NOTHING", TENANT, *PRICES.values())
        # without SECRETS_KEY the outbox is written but nothing is sent: the row is what this test looks at
        await db.execute(
            "INSERT INTO webhooks (id, tenant_id, url, events, secret_sealed) VALUES"
            " ('wh-summaries', $1, 'https://example.com/hook', ARRAY['analytics.summary'], '\\x00'::bytea)"
            " ON CONFLICT DO NOTHING", TENANT)
        try:
            yield World(bus, db, llm)
        finally:
            await db.close()
            await bus.close()
            await svc.stop()


def iso(t: datetime) -> str:
    return t.isoformat()


async def publish_call(w: World, *, late_turn: bool = True, agent: AgentConfig = AGENT) -> tuple[str, Envelope[Any]]:
    """A 60 s phone call of two turns (the second completed only after call.ended); returns its id and its
    call.ended. Usage: 1000 + 500 input tokens, 100 + 60 output, 400 + 200 TTS characters."""
    call_id = subjects.new_call_id()
    t0 = datetime.now(UTC) - timedelta(seconds=60)

    def env(data: Any, turn_id: str | None = None, at: datetime | None = None) -> Envelope[Any]:
        e = make(data, tenant_id=TENANT, call_id=call_id, turn_id=turn_id)
        return e.model_copy(update={"occurred_at": at}) if at else e

    await w.bus.publish(env(events.CallStarted(agent_id=agent.id, agent_version=agent.version, channel="twilio",
                                               from_number="+14155550199"), at=t0))
    await w.bus.publish(env(events.CallAnswered(), at=t0 + timedelta(seconds=1)))
    for i, text in enumerate(["I am furious, my appointment was cancelled.", "Thank you, that is great!"]):
        await w.bus.publish(env(events.TranscriptFinalized(utterance_id=f"u{i}", text=text), f"t{i}"))
    turns = [
        events.TurnCompleted(
            caller_text="I am furious, my appointment was cancelled.", agent_text="Sorry! Monday at nine?",
            caller_started_at=iso(t0 + timedelta(seconds=5)), caller_ended_at=iso(t0 + timedelta(seconds=9)),
            agent_started_at=iso(t0 + timedelta(seconds=10)), agent_ended_at=iso(t0 + timedelta(seconds=13)),
            latency=events.LatencyBreakdown(voice_to_voice_ms=800.0),
            usage=events.TurnUsage(llm_input_tokens=1000, llm_output_tokens=100, tts_characters=400),
        ),
        events.TurnCompleted(
            caller_text="Thank you, that is great!", agent_text="You're welcome, goodbye!", interrupted=True,
            caller_started_at=iso(t0 + timedelta(seconds=20)), caller_ended_at=iso(t0 + timedelta(seconds=22)),
            agent_started_at=iso(t0 + timedelta(seconds=23)), agent_ended_at=iso(t0 + timedelta(seconds=25)),
            latency=events.LatencyBreakdown(voice_to_voice_ms=1200.0),
            usage=events.TurnUsage(llm_input_tokens=500, llm_output_tokens=60, tts_characters=200),
        ),
    ]
    await w.bus.publish(env(turns[0], "t0"))
    if not late_turn:
        await w.bus.publish(env(turns[1], "t1"))
    ended = env(events.CallEnded(reason=events.EndReason.agent_hangup), at=t0 + timedelta(seconds=61))
    await w.bus.publish(ended)
    if late_turn:  # brain completes the unfinished turn when the call ends
        await w.bus.publish(env(turns[1], "t1"))
    return call_id, ended


async def summary_row(w: World, call_id: str) -> asyncpg.Record:
    return await until(lambda: w.db.fetchrow("SELECT * FROM call_summaries WHERE call_id = $1", call_id),
                       "the call's summary row")


async def summary_events(w: World, call_id: str) -> list[Envelope[Any]]:
    sub = await w.bus.js.subscribe(subjects.call_filter(call_id, "analytics", "summary"), ordered_consumer=True)
    got = [parse((await sub.next_msg(timeout=30)).data)]
    with pytest.raises(asyncio.TimeoutError):
        got.append(parse((await sub.next_msg(timeout=0.5)).data))
    await sub.unsubscribe()
    return got


def expected_cost(handle_s: float, caller_s: float) -> dict[str, Decimal]:
    q = Decimal("0.000001")
    lines = {
        "telephony": Decimal(str(handle_s)) / 60 * PRICES["telephony_per_minute"],
        "stt": Decimal(str(caller_s)) / 60 * PRICES["stt_per_minute"],
        "llm_input": Decimal(1500) / 1000 * PRICES["llm_input_per_1k_tokens"],
        "llm_output": Decimal(160) / 1000 * PRICES["llm_output_per_1k_tokens"],
        "tts": Decimal(600) / 1000 * PRICES["tts_per_1k_chars"],
    }
    out = {k: v.quantize(q) for k, v in lines.items()}
    out["total"] = sum(out.values(), Decimal(0))
    return out


async def test_an_ended_call_gets_its_summary_kpis_and_cost_once(world: World) -> None:
    w = world
    w.llm.reset(Script(text=json.dumps(ANSWER)))
    call_id, _ = await publish_call(w)
    row = await summary_row(w, call_id)

    assert row["source"] == "llm" and row["fallback_reason"] is None
    assert row["summary"] == ANSWER["summary"] and row["disposition"] == "resolved"
    assert list(row["tags"]) == ["appointment", "reschedule"]
    # the model: the platform's, with its key, asked once for a bounded, non-streamed JSON answer
    assert len(w.llm.requests) == 1 and w.llm.authorizations == [f"Bearer {PLATFORM_KEY}"]
    request = w.llm.requests[0]
    assert request["model"] == "summary-model" and request["max_tokens"] == 200 and not request.get("stream")
    prompt = request["messages"][1]["content"]
    assert "Caller: I am furious" in prompt and "Agent: You're welcome, goodbye!" in prompt  # the late turn too

    kpis = json.loads(row["kpis"])
    assert kpis["handle_time_s"] == 60.0  # answered (t0 + 1) -> ended (t0 + 61)
    assert kpis["caller_talk_s"] == 6.0 and kpis["agent_talk_s"] == 5.0
    assert kpis["interruptions"] == 1.0 and kpis["longest_silence_s"] == 7.0
    assert kpis["agent_latency_p50_ms"] == 800.0 and kpis["agent_latency_p95_ms"] == 1200.0
    rolling = [r["rolling"] for r in await w.db.fetch(
        "SELECT rolling FROM call_sentiment WHERE call_id = $1 ORDER BY id", call_id)]
    assert len(rolling) == 2 and kpis["csat_estimate"] == csat.estimate(rolling)

    cost = expected_cost(60.0, 6.0)
    assert row["currency"] == "EUR"
    assert {k: row[f"cost_{k}"] for k in cost} == cost
    assert json.loads(row["usage"])["llm_input_tokens"] == 1500

    (event,) = await summary_events(w, call_id)
    assert event.type == "analytics.summary" and event.tenant_id == TENANT
    assert event.data.summary == ANSWER["summary"] and event.data.source == "llm"
    assert event.data.disposition == "resolved" and event.data.kpis == kpis
    assert event.data.currency == "EUR" and Decimal(event.data.cost["total"]) == cost["total"]
    deliveries = await until(lambda: w.db.fetch(
        "SELECT event_id FROM webhook_deliveries WHERE call_id = $1 AND event_type = 'analytics.summary'", call_id),
        "the summary's webhook delivery")
    assert [d["event_id"] for d in deliveries] == [event.id]


async def test_a_redelivered_call_end_summarises_once(world: World) -> None:
    w = world
    w.llm.reset(Script(text=json.dumps(ANSWER)))
    call_id, ended = await publish_call(w, late_turn=False)
    first = await summary_row(w, call_id)
    (event,) = await summary_events(w, call_id)
    # the same call.ended again, as a redelivery after the dedupe window would bring it
    ack = await w.bus.js.publish(ended.subject, ended.to_bytes(), headers={"Nats-Msg-Id": subjects.new_id()})

    async def consumed() -> bool:
        info = await w.bus.js.consumer_info("CALLS", ANALYTICS_SUMMARIES.durable)
        return info.delivered.stream_seq >= ack.seq and not info.num_ack_pending

    await until(consumed, "the redelivered call.ended to be handled")
    assert await w.db.fetchval("SELECT count(*) FROM call_summaries WHERE call_id = $1", call_id) == 1
    assert (await w.db.fetchrow("SELECT * FROM call_summaries WHERE call_id = $1", call_id)) == first
    assert len(w.llm.requests) == 1  # the model was not asked again
    assert [e.id for e in await summary_events(w, call_id)] == [event.id]  # the re-publish was a duplicate
    assert await w.db.fetchval(
        "SELECT count(*) FROM webhook_deliveries WHERE call_id = $1 AND event_type = 'analytics.summary'",
        call_id) == 1


@pytest.mark.parametrize("script,reason", [
    (Script(status=500), "HTTP 500"),
    (Script(text="Sure! The caller wanted an appointment."), "unusable answer"),
    (Script(stall_s=8.0), "no answer within"),
])
async def test_when_the_model_fails_the_summary_is_extractive(world: World, script: Script, reason: str) -> None:
    w = world
    w.llm.reset(script)
    call_id, _ = await publish_call(w)
    row = await summary_row(w, call_id)
    assert row["source"] == "extractive" and reason in row["fallback_reason"]
    assert 'The caller said: "I am furious, my appointment was cancelled."' in row["summary"]
    assert row["disposition"] == "resolved"  # the agent ended the call, the caller ended happy
    assert "appointment" in row["tags"]
    assert json.loads(row["kpis"])["handle_time_s"] == 60.0 and row["cost_total"] == expected_cost(60.0, 6.0)["total"]
    (event,) = await summary_events(w, call_id)
    assert event.data.source == "extractive" and event.data.summary == row["summary"]


async def test_an_agent_endpoint_on_an_internal_address_is_refused_and_the_summary_is_extractive(
        world: World) -> None:
    """The agent's own endpoint goes through the egress guard (no EGRESS_ALLOW here): never reached."""
    w = world
    w.llm.reset(Script(text=json.dumps(ANSWER)))
    own = AgentConfig(id="agent-own-llm", tenant_id=TENANT, version=1, llm={"base_url": w.llm.base_url})
    kv = await w.bus.provision()
    await kv[KV_AGENTS.bucket].put(subjects.agent_version_key(own.id, own.version), own.model_dump_json().encode())
    call_id, _ = await publish_call(w, agent=own)
    row = await summary_row(w, call_id)
    assert row["source"] == "extractive" and "EGRESS_ALLOW" in row["fallback_reason"]
    assert w.llm.requests == [] and PLATFORM_KEY not in row["fallback_reason"]
