"""Calls and their turns, written by analytics from bus events; read-only here."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg

from ..models import Call, Turn
from ..models_intents import TurnIntentOut
from ..models_knowledge import TurnSource
from . import row_as

COLUMNS = (
    "c.id, c.tenant_id, c.agent_id, c.agent_version, c.channel, c.from_number, c.to_number, c.status, "
    "c.started_at, c.answered_at, c.ended_at, c.end_reason, c.duration_s"
)
# a supervisor sees the calls of the agents they own (deleted ones included)
_OWNED = "($2::text IS NULL OR c.agent_id IN (SELECT id FROM agents WHERE tenant_id = $1 AND owner_user_id = $2))"


async def get(conn: asyncpg.Connection, tenant_id: str, call_id: str, *, owner: str | None) -> Call | None:
    row = await conn.fetchrow(
        f"SELECT {COLUMNS} FROM calls c WHERE c.tenant_id = $1 AND {_OWNED} AND c.id = $3", tenant_id, owner, call_id
    )
    return row_as(Call, row) if row else None


async def delete(conn: asyncpg.Connection, tenant_id: str, call_id: str) -> bool:
    """Delete the call with its turns and recording row (cascades)."""
    deleted = await conn.fetchval("DELETE FROM calls WHERE tenant_id = $1 AND id = $2 RETURNING 1", tenant_id, call_id)
    return bool(deleted)


async def list_(
    conn: asyncpg.Connection,
    tenant_id: str,
    *,
    owner: str | None,
    status: str | None,
    agent_id: str | None,
    number: str | None,
    started_after: datetime | None,
    started_before: datetime | None,
    channel: str | None,
    limit: int,
    offset: int,
) -> list[Call]:
    rows = await conn.fetch(
        f"""
        SELECT {COLUMNS} FROM calls c
        WHERE c.tenant_id = $1 AND {_OWNED}
          AND ($3::text IS NULL OR c.status = $3) AND ($4::text IS NULL OR c.agent_id = $4)
          AND ($5::text IS NULL OR c.from_number = $5 OR c.to_number = $5)
          AND ($6::timestamptz IS NULL OR c.started_at >= $6) AND ($7::timestamptz IS NULL OR c.started_at < $7)
          AND ($8::text IS NULL OR c.channel = $8)
        ORDER BY c.started_at DESC, c.id DESC LIMIT $9 OFFSET $10
        """,
        tenant_id,
        owner,
        status,
        agent_id,
        number,
        started_after,
        started_before,
        channel,
        limit,
        offset,
    )
    return [row_as(Call, r) for r in rows]


def _latency(raw: Any) -> tuple[float | None, dict[str, float] | None]:
    """call_turns.latency_ms holds the per-stage breakdown (jsonb). The turn's headline number is the
    voice-to-voice stage; a bare number (older writers) is taken as that headline."""
    if raw is None:
        return None, None
    value = json.loads(raw) if isinstance(raw, str) else raw
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value), None
    if not isinstance(value, dict):
        return None, None
    stages = {str(k): float(v) for k, v in value.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return stages.get("voice_to_voice_ms"), stages


async def turns(conn: asyncpg.Connection, tenant_id: str, call_id: str) -> list[Turn]:
    rows = await conn.fetch(
        """
        SELECT turn_id, speaker, text, started_at, ended_at, interrupted, latency_ms, sources,
               intent, intent_confidence, intent_cached FROM call_turns
        WHERE call_id = $1 AND tenant_id = $2
        ORDER BY COALESCE(started_at, ended_at) NULLS LAST, id
        """,
        call_id,
        tenant_id,
    )
    out = []
    for r in rows:
        headline, stages = _latency(r["latency_ms"])
        out.append(
            Turn(
                turn_id=r["turn_id"],
                speaker=r["speaker"],
                text=r["text"],
                started_at=r["started_at"],
                ended_at=r["ended_at"],
                interrupted=r["interrupted"],
                latency_ms=headline,
                latency=stages,
                sources=_sources(r["sources"]),
                intent=TurnIntentOut(name=r["intent"], confidence=r["intent_confidence"] or 0.0,
                                     cached=bool(r["intent_cached"])) if r["intent"] else None,
            )
        )
    return out


def _sources(raw: Any) -> list[TurnSource]:
    """call_turns.sources: the knowledge chunks of an agent turn (jsonb list, as brain reported them)."""
    value = json.loads(raw) if isinstance(raw, str) else raw
    return [TurnSource.model_validate(s) for s in value] if isinstance(value, list) else []
