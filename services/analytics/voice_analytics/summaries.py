"""After a call: its summary, KPIs and cost, stored once and published as ``analytics.summary``.

The ``analytics-summaries`` consumer takes ``call.ended``. Turns may still be recorded just after it (brain
completes an unfinished turn when the call ends), so the event first waits ``SUMMARY_SETTLE_S`` after the call's end
as a durable timer (``Later``: the message comes back to whichever replica is alive then). The call must then be
recorded as ended (else the event is retried: the recorder consumes the same event on its own consumer).

``load`` reads what is needed in one go (the call, its turns in spoken order, at most ``MAX_TURNS``; the caller's
rolling sentiment; the usage summed over every turn; the tenant's prices), the summary, KPIs and cost are computed
from it (``summarizer``, ``kpis``, ``cost``), and ``store`` writes one ``call_summaries`` row per call (its primary
key): a redelivered or second ``call.ended`` finds the row and only re-publishes the same event (its id derives from
the call id, so JetStream and every consumer, the webhook outbox included, drop the copy).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
from voice_runtime.bus import Transient
from voice_schemas import Envelope, events, make

from . import cost, kpis
from .summary import Line, Summary

MAX_TURNS = 2000  # turns read per call (a call's transcript is bounded in the summary's prompt anyway)
MAX_SCORES = 2000


@dataclass(frozen=True)
class CallFacts:
    id: str
    tenant_id: str
    agent_id: str
    agent_version: int
    channel: str
    started_at: datetime
    answered_at: datetime | None
    ended_at: datetime | None
    end_reason: str | None
    lines: list[Line]
    turns: list[kpis.TurnTimes]
    caller_rolling: list[float]
    llm_input_tokens: int
    llm_output_tokens: int
    llm_tokens_estimated: bool
    tts_characters: int
    prices: cost.PriceTable


@dataclass(frozen=True)
class Stored:
    call_id: str
    tenant_id: str
    summary: str
    disposition: str
    tags: list[str]
    source: str
    kpis: dict[str, float]
    currency: str
    cost: dict[str, str]


def summary_event_id(call_id: str) -> str:
    return hashlib.sha256(f"{call_id}:summary".encode()).hexdigest()[:32]


def _db_errors() -> tuple[type[BaseException], ...]:
    return (OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError)


async def load(pool: asyncpg.Pool, call_id: str) -> CallFacts | None:
    """The call's facts, or None when its row or its end is not recorded yet."""
    try:
        async with pool.acquire() as conn:
            call = await conn.fetchrow(
                "SELECT id, tenant_id, agent_id, agent_version, channel, started_at, answered_at, ended_at,"
                " end_reason FROM calls WHERE id = $1", call_id)
            if call is None or call["ended_at"] is None:
                return None
            turns = await conn.fetch(
                "SELECT speaker, text, started_at, ended_at, interrupted,"
                " (latency_ms->>'voice_to_voice_ms')::double precision AS v2v"
                " FROM call_turns WHERE call_id = $1"
                " ORDER BY COALESCE(started_at, ended_at) NULLS LAST, id LIMIT $2", call_id, MAX_TURNS)
            used = await conn.fetchrow(
                "SELECT COALESCE(SUM(llm_input_tokens), 0) AS i, COALESCE(SUM(llm_output_tokens), 0) AS o,"
                " COALESCE(bool_or(llm_tokens_estimated), false) AS est, COALESCE(SUM(tts_characters), 0) AS tts"
                " FROM call_turns WHERE call_id = $1", call_id)
            rolling = await conn.fetch(
                "SELECT rolling FROM call_sentiment WHERE call_id = $1 AND speaker = 'caller' ORDER BY id LIMIT $2",
                call_id, MAX_SCORES)
            prices = await conn.fetchrow(
                "SELECT currency, telephony_per_minute, stt_per_minute, llm_input_per_1k_tokens,"
                " llm_output_per_1k_tokens, tts_per_1k_chars FROM tenant_prices WHERE tenant_id = $1",
                call["tenant_id"])
    except _db_errors() as e:
        raise Transient(f"database unavailable: {e}") from e
    return CallFacts(
        id=call["id"], tenant_id=call["tenant_id"], agent_id=call["agent_id"], agent_version=call["agent_version"],
        channel=call["channel"], started_at=call["started_at"], answered_at=call["answered_at"],
        ended_at=call["ended_at"], end_reason=call["end_reason"],
        lines=[Line(t["speaker"], t["text"]) for t in turns if t["text"]],
        turns=[kpis.TurnTimes(t["speaker"], t["started_at"], t["ended_at"], t["interrupted"], t["v2v"])
               for t in turns],
        caller_rolling=[r["rolling"] for r in rolling],
        llm_input_tokens=int(used["i"]), llm_output_tokens=int(used["o"]), llm_tokens_estimated=used["est"],
        tts_characters=int(used["tts"]),
        prices=cost.PriceTable(**dict(prices)) if prices else cost.DEFAULT_PRICES,
    )


def measure(facts: CallFacts) -> tuple[kpis.Kpis, cost.Usage, cost.Cost]:
    """The call's KPIs, billable usage and cost (pure)."""
    k = kpis.compute(facts.started_at, facts.answered_at, facts.ended_at, facts.turns, facts.caller_rolling)
    usage = cost.usage_of(facts.channel, k.handle_time_s, k.caller_talk_s, facts.llm_input_tokens,
                          facts.llm_output_tokens, facts.tts_characters, facts.llm_tokens_estimated)
    return k, usage, cost.cost_of(usage, facts.prices)


async def stored(pool: asyncpg.Pool, call_id: str) -> Stored | None:
    try:
        async with pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT call_id, tenant_id, summary, disposition, tags, source, kpis, currency, cost_telephony,"
                " cost_stt, cost_llm_input, cost_llm_output, cost_tts, cost_total FROM call_summaries"
                " WHERE call_id = $1", call_id)
    except _db_errors() as e:
        raise Transient(f"database unavailable: {e}") from e
    return _stored(row) if row else None


async def store(pool: asyncpg.Pool, facts: CallFacts, s: Summary, k: kpis.Kpis, usage: cost.Usage,
                c: cost.Cost) -> Stored:
    """Write the call's summary row once; whichever writer was first wins, and its row is returned."""
    p = facts.prices
    prices = {"currency": p.currency, "telephony_per_minute": str(p.telephony_per_minute),
              "stt_per_minute": str(p.stt_per_minute), "llm_input_per_1k_tokens": str(p.llm_input_per_1k_tokens),
              "llm_output_per_1k_tokens": str(p.llm_output_per_1k_tokens), "tts_per_1k_chars": str(p.tts_per_1k_chars)}
    usage_json = {"telephony_s": usage.telephony_s, "stt_audio_s": usage.stt_audio_s,
                  "llm_input_tokens": usage.llm_input_tokens, "llm_output_tokens": usage.llm_output_tokens,
                  "llm_tokens_estimated": usage.llm_tokens_estimated, "tts_characters": usage.tts_characters}
    try:
        async with pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO call_summaries (call_id, tenant_id, agent_id, summary, disposition, tags, source,"
                " fallback_reason, kpis, usage, prices, currency, cost_telephony, cost_stt, cost_llm_input,"
                " cost_llm_output, cost_tts, cost_total)"
                " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9::jsonb,$10::jsonb,$11::jsonb,$12,$13,$14,$15,$16,$17,$18)"
                " ON CONFLICT (call_id) DO NOTHING",
                facts.id, facts.tenant_id, facts.agent_id, s.summary, s.disposition, list(s.tags), s.source,
                s.fallback_reason, json.dumps(k.as_dict()), json.dumps(usage_json), json.dumps(prices), c.currency,
                c.telephony, c.stt, c.llm_input, c.llm_output, c.tts, c.total)
    except asyncpg.ForeignKeyViolationError as e:
        raise Transient("call row not written yet") from e
    except _db_errors() as e:
        raise Transient(f"database unavailable: {e}") from e
    row = await stored(pool, facts.id)
    if row is None:  # deleted between the write and the read: nothing to publish
        raise Transient("the call's summary vanished")
    return row


def _stored(row: asyncpg.Record) -> Stored:
    raw = row["kpis"]
    lines: dict[str, Decimal] = {
        "telephony": row["cost_telephony"], "stt": row["cost_stt"], "llm_input": row["cost_llm_input"],
        "llm_output": row["cost_llm_output"], "tts": row["cost_tts"], "total": row["cost_total"],
    }
    return Stored(
        call_id=row["call_id"], tenant_id=row["tenant_id"], summary=row["summary"], disposition=row["disposition"],
        tags=list(row["tags"]), source=row["source"], kpis=json.loads(raw) if isinstance(raw, str) else dict(raw),
        currency=row["currency"], cost={k: str(v) for k, v in lines.items()},
    )


def event_of(s: Stored) -> Envelope[Any]:
    return make(
        events.CallSummarized(summary=s.summary, tags=s.tags, kpis=s.kpis, disposition=s.disposition,
                              source=s.source, cost=s.cost, currency=s.currency),
        tenant_id=s.tenant_id, call_id=s.call_id, event_id=summary_event_id(s.call_id),
    )
