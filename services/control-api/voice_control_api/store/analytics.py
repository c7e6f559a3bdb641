"""Post-call analytics as analytics wrote them (``call_summaries``, ``call_sentiment``): one call's, and the daily
aggregates per agent. Read-only here; every query filters by tenant and, for a supervisor, by the agents they own."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from ..models_analytics import AgentDay, CallAnalytics, CallCost

# a supervisor sees the calls of the agents they own (deleted ones included), as in store/calls.py
_OWNED = "($2::text IS NULL OR c.agent_id IN (SELECT id FROM agents WHERE tenant_id = $1 AND owner_user_id = $2))"


def _json(raw: Any) -> Any:
    return json.loads(raw) if isinstance(raw, str) else raw


async def of_call(conn: asyncpg.Connection, tenant_id: str, call_id: str) -> CallAnalytics | None:
    row = await conn.fetchrow(
        """
        SELECT summary, disposition, tags, source, fallback_reason, kpis, usage, currency, cost_telephony, cost_stt,
               cost_llm_input, cost_llm_output, cost_tts, cost_total, created_at
        FROM call_summaries WHERE tenant_id = $1 AND call_id = $2
        """,
        tenant_id,
        call_id,
    )
    if row is None:
        return None
    return CallAnalytics(
        summary=row["summary"],
        disposition=row["disposition"],
        tags=list(row["tags"]),
        source=row["source"],
        fallback_reason=row["fallback_reason"],
        kpis=_json(row["kpis"]),
        usage=_json(row["usage"]),
        cost=CallCost(
            currency=row["currency"],
            telephony=row["cost_telephony"],
            stt=row["cost_stt"],
            llm_input=row["cost_llm_input"],
            llm_output=row["cost_llm_output"],
            tts=row["cost_tts"],
            total=row["cost_total"],
        ),
        created_at=row["created_at"],
    )


async def daily(
    conn: asyncpg.Connection,
    tenant_id: str,
    *,
    owner: str | None,
    agent_id: str | None,
    start: datetime,
    end: datetime,
    fcr_window_hours: int,
) -> list[AgentDay]:
    """Per agent and UTC day, the calls that started in [start, end)."""
    scoped = f"""
        scoped AS (
            SELECT c.id, c.agent_id, c.from_number, c.started_at, c.answered_at, c.ended_at,
                   (c.started_at AT TIME ZONE 'UTC')::date AS day
            FROM calls c
            WHERE c.tenant_id = $1 AND {_OWNED} AND ($3::text IS NULL OR c.agent_id = $3)
              AND c.started_at >= $4 AND c.started_at < $5
        )"""
    rows = await conn.fetch(
        f"""
        WITH {scoped},
        sentiment AS (
            SELECT s.call_id, avg(s.compound) AS mean
            FROM call_sentiment s JOIN scoped ON scoped.id = s.call_id
            WHERE s.speaker = 'caller' GROUP BY s.call_id
        ),
        firsts AS (
            SELECT DISTINCT ON (agent_id, day, from_number) agent_id, day, from_number, started_at
            FROM scoped WHERE from_number IS NOT NULL
            ORDER BY agent_id, day, from_number, started_at, id
        ),
        fcr AS (
            SELECT f.agent_id, f.day, count(*) AS callers,
                   count(*) FILTER (WHERE NOT EXISTS (
                       SELECT 1 FROM calls again
                       WHERE again.tenant_id = $1 AND again.agent_id = f.agent_id
                         AND again.from_number = f.from_number AND again.started_at > f.started_at
                         AND again.started_at <= f.started_at + make_interval(hours => $6::int))) AS resolved
            FROM firsts f GROUP BY f.agent_id, f.day
        )
        SELECT s.agent_id, s.day, count(*) AS calls, count(s.ended_at) AS ended_calls,
               avg(EXTRACT(EPOCH FROM (s.ended_at - COALESCE(s.answered_at, s.started_at))))::double precision
                   AS aht_s,
               count(sm.call_id) AS summarized_calls,
               avg(sentiment.mean)::double precision AS avg_sentiment,
               avg((sm.kpis->>'csat_estimate')::double precision) AS avg_csat,
               COALESCE(max(fcr.callers), 0) AS fcr_callers, max(fcr.resolved) AS fcr_resolved
        FROM scoped s
        LEFT JOIN call_summaries sm ON sm.call_id = s.id
        LEFT JOIN sentiment ON sentiment.call_id = s.id
        LEFT JOIN fcr ON fcr.agent_id = s.agent_id AND fcr.day = s.day
        GROUP BY s.agent_id, s.day
        ORDER BY s.day, s.agent_id
        """,
        tenant_id,
        owner,
        agent_id,
        start,
        end,
        fcr_window_hours,
    )
    costs: dict[tuple[str, date], dict[str, Decimal]] = defaultdict(dict)
    for r in await conn.fetch(
        f"""
        WITH {scoped}
        SELECT s.agent_id, s.day, sm.currency, sum(sm.cost_total) AS total
        FROM scoped s JOIN call_summaries sm ON sm.call_id = s.id
        GROUP BY s.agent_id, s.day, sm.currency
        """,
        tenant_id,
        owner,
        agent_id,
        start,
        end,
    ):
        costs[(r["agent_id"], r["day"])][r["currency"]] = r["total"]
    return [
        AgentDay(
            agent_id=r["agent_id"],
            day=r["day"],
            calls=r["calls"],
            ended_calls=r["ended_calls"],
            aht_s=None if r["aht_s"] is None else round(r["aht_s"], 3),
            summarized_calls=r["summarized_calls"],
            cost=costs.get((r["agent_id"], r["day"]), {}),
            avg_sentiment=None if r["avg_sentiment"] is None else round(r["avg_sentiment"], 4),
            avg_csat=None if r["avg_csat"] is None else round(r["avg_csat"], 2),
            fcr=round(r["fcr_resolved"] / r["fcr_callers"], 4) if r["fcr_callers"] else None,
            fcr_callers=r["fcr_callers"],
        )
        for r in rows
    ]
