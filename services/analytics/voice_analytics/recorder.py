"""Writes calls and their turns to PostgreSQL from durable events, exactly once per event.

Each event is applied in one transaction together with a row in ``processed_events``; a redelivered
event finds its row and changes nothing. Turn rows are also unique per (call, turn, speaker).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg
from voice_runtime.bus import Transient
from voice_schemas import Envelope, events

CONSUMER = "analytics-recorder"
Step = Callable[[asyncpg.Connection, Envelope[Any]], Awaitable[None]]


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class CallRecorder:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def apply(self, env: Envelope[Any], step: Step) -> bool:
        """Apply one event with ``step`` (one of the functions below); False when it was already applied."""
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                inserted = await conn.fetchval(
                    "INSERT INTO processed_events(consumer, event_id) VALUES ($1, $2) "
                    "ON CONFLICT DO NOTHING RETURNING 1", CONSUMER, env.id)
                if not inserted:
                    return False
                await step(conn, env)
                return True
        except asyncpg.ForeignKeyViolationError as e:
            raise Transient("call row not written yet") from e
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError) as e:
            raise Transient(f"database unavailable: {e}") from e


async def call_started(conn: asyncpg.Connection, env: Envelope[Any]) -> None:
    d: events.CallStarted = env.data
    await conn.execute(
        "INSERT INTO calls(id, tenant_id, agent_id, agent_version, channel, from_number, to_number,"
        " status, started_at) VALUES ($1,$2,$3,$4,$5,$6,$7,'ringing',$8) ON CONFLICT (id) DO NOTHING",
        env.call_id, env.tenant_id, d.agent_id, d.agent_version, d.channel.value, d.from_number,
        d.to_number, env.occurred_at)


async def call_answered(conn: asyncpg.Connection, env: Envelope[Any]) -> None:
    await _require_call(conn, env)
    await conn.execute(
        "UPDATE calls SET answered_at = COALESCE(answered_at, $2),"
        " status = CASE WHEN status = 'ended' THEN status ELSE 'in_progress' END WHERE id = $1",
        env.call_id, env.occurred_at)


async def call_ended(conn: asyncpg.Connection, env: Envelope[Any]) -> None:
    d: events.CallEnded = env.data
    await _require_call(conn, env)
    await conn.execute(
        "UPDATE calls SET status = 'ended', ended_at = COALESCE(ended_at, $2),"
        " end_reason = COALESCE(end_reason, $3),"
        " duration_s = COALESCE(duration_s, $4, EXTRACT(EPOCH FROM ($2 - started_at))) WHERE id = $1",
        env.call_id, env.occurred_at, d.reason.value, d.duration_s)


async def turn_completed(conn: asyncpg.Connection, env: Envelope[Any]) -> None:
    """The turn's caller and agent rows; its usage (for the call's cost) goes on the agent row, or on the caller row
    when the turn has no agent row."""
    d: events.TurnCompleted = env.data
    await _require_call(conn, env)
    turn_id = env.turn_id or env.id
    agent_row = bool(d.agent_text or d.interrupted)
    u = d.usage
    usage = (u.llm_input_tokens, u.llm_output_tokens, u.llm_tokens_estimated, u.tts_characters)
    none = (0, 0, False, 0)
    if d.caller_text:
        i = d.intent  # the intent the caller's words matched (on the caller row: it is about them)
        await conn.execute(
            "INSERT INTO call_turns(call_id, tenant_id, turn_id, speaker, text, started_at, ended_at,"
            " interrupted, latency_ms, llm_input_tokens, llm_output_tokens, llm_tokens_estimated, tts_characters,"
            " intent, intent_confidence, intent_cached)"
            " VALUES ($1,$2,$3,'caller',$4,$5,$6,false,NULL,$7,$8,$9,$10,$11,$12,$13)"
            " ON CONFLICT (call_id, turn_id, speaker) DO NOTHING",
            env.call_id, env.tenant_id, turn_id, d.caller_text, _ts(d.caller_started_at),
            _ts(d.caller_ended_at), *(none if agent_row else usage),
            i.name if i else None, i.confidence if i else None, i.cached if i else None)
    if agent_row:
        await conn.execute(
            "INSERT INTO call_turns(call_id, tenant_id, turn_id, speaker, text, started_at, ended_at,"
            " interrupted, latency_ms, llm_input_tokens, llm_output_tokens, llm_tokens_estimated, tts_characters,"
            " sources) VALUES ($1,$2,$3,'agent',$4,$5,$6,$7,$8::jsonb,$9,$10,$11,$12,$13::jsonb)"
            " ON CONFLICT (call_id, turn_id, speaker) DO NOTHING",
            env.call_id, env.tenant_id, turn_id, d.agent_text, _ts(d.agent_started_at),
            _ts(d.agent_ended_at), d.interrupted,
            d.latency.model_dump_json(exclude_none=True), *usage, _sources(d))


def _sources(d: events.TurnCompleted) -> str | None:
    """The knowledge chunks the reply was given (jsonb; null when none)."""
    return json.dumps([x.model_dump(mode="json") for x in d.sources]) if d.sources else None


async def _require_call(conn: asyncpg.Connection, env: Envelope[Any]) -> None:
    exists = await conn.fetchval("SELECT 1 FROM calls WHERE id = $1", env.call_id)
    if not exists:
        raise Transient("call row not written yet")
