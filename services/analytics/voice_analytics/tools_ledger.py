"""The tool-call ledger: every tool call of an agent, its supervisor decision and its result, in ``tool_calls``.

Each event is an upsert keyed by the tool call's id, written so that any order of arrival (a redelivery can
overtake a later event) ends in the same row: the call's name, arguments and time come from ``tool.call``; a
decision is kept only over ``pending`` or ``none`` (the first decision wins, as in brain); ``tool.approval_requested``
never turns a decided call back to pending; a result is kept once.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import asyncpg
from voice_runtime.bus import Transient
from voice_schemas import Envelope, events

_UPSERT_CALL = """
INSERT INTO tool_calls (tool_call_id, call_id, tenant_id, turn_id, name, arguments, called_at)
VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)
ON CONFLICT (tool_call_id) DO UPDATE SET
    name = EXCLUDED.name, arguments = EXCLUDED.arguments, called_at = EXCLUDED.called_at,
    turn_id = COALESCE(tool_calls.turn_id, EXCLUDED.turn_id)
"""
_UPSERT_REQUESTED = """
INSERT INTO tool_calls (tool_call_id, call_id, tenant_id, turn_id, name, arguments, called_at, approval,
                        approval_deadline)
VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, 'pending', $8)
ON CONFLICT (tool_call_id) DO UPDATE SET
    approval = CASE WHEN tool_calls.approval = 'none' THEN 'pending' ELSE tool_calls.approval END,
    approval_deadline = EXCLUDED.approval_deadline
"""
_UPSERT_DECIDED = """
INSERT INTO tool_calls (tool_call_id, call_id, tenant_id, turn_id, name, called_at, approval, decided_by,
                        decided_at, decision_comment)
VALUES ($1, $2, $3, $4, '', $5, $6, $7, $5, $8)
ON CONFLICT (tool_call_id) DO UPDATE SET
    approval = EXCLUDED.approval, decided_by = EXCLUDED.decided_by, decided_at = EXCLUDED.decided_at,
    decision_comment = EXCLUDED.decision_comment
WHERE tool_calls.approval IN ('none', 'pending')
"""
_UPSERT_RESULT = """
INSERT INTO tool_calls (tool_call_id, call_id, tenant_id, turn_id, name, called_at, ok, result, error, duration_ms,
                        completed_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10, $6)
ON CONFLICT (tool_call_id) DO UPDATE SET
    ok = EXCLUDED.ok, result = EXCLUDED.result, error = EXCLUDED.error, duration_ms = EXCLUDED.duration_ms,
    completed_at = EXCLUDED.completed_at
WHERE tool_calls.completed_at IS NULL
"""


def _json(value: Any) -> str:
    return json.dumps(value, default=str)


def decision_of(d: events.ToolApprovalDecided) -> str:
    if d.approved:
        return "approved"
    return "timeout" if d.decided_by == "timeout" else "denied"


async def record(pool: asyncpg.Pool, env: Envelope[Any]) -> None:
    d, at = env.data, env.occurred_at
    head = (env.call_id, env.tenant_id, env.turn_id)
    try:
        async with pool.acquire() as conn:
            if isinstance(d, events.ToolCallRequested):
                await conn.execute(_UPSERT_CALL, d.tool_call_id, *head, d.name, _json(d.arguments), at)
            elif isinstance(d, events.ToolApprovalRequested):
                await conn.execute(_UPSERT_REQUESTED, d.tool_call_id, *head, d.name, _json(d.arguments), at,
                                   at + timedelta(seconds=d.timeout_s))
            elif isinstance(d, events.ToolApprovalDecided):
                await conn.execute(_UPSERT_DECIDED, d.tool_call_id, *head, at, decision_of(d), d.decided_by,
                                   d.comment)
            elif isinstance(d, events.ToolResultReturned):
                await conn.execute(_UPSERT_RESULT, d.tool_call_id, *head, d.name, at, d.ok,
                                   _json(d.result) if d.ok else None, d.error, d.duration_ms)
    except asyncpg.ForeignKeyViolationError as e:
        raise Transient("call row not written yet") from e
    except (OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError) as e:
        raise Transient(f"database unavailable: {e}") from e
