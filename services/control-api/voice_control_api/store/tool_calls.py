"""The tool-call ledger (written by analytics from the bus); read-only here."""

from __future__ import annotations

import json

import asyncpg

from ..models_tools import ToolCallRecord

COLUMNS = (
    "t.tool_call_id, t.call_id, t.turn_id, t.name, t.arguments, t.called_at, t.approval, t.approval_deadline, "
    "t.decided_by, t.decided_at, t.decision_comment, t.ok, t.result, t.error, t.duration_ms, t.completed_at"
)


async def list_for_call(conn: asyncpg.Connection, tenant_id: str, call_id: str,
                        limit: int = 200) -> list[ToolCallRecord]:
    rows = await conn.fetch(
        f"SELECT {COLUMNS} FROM tool_calls t WHERE t.tenant_id = $1 AND t.call_id = $2"
        " ORDER BY t.called_at, t.tool_call_id LIMIT $3",
        tenant_id, call_id, limit,
    )
    return [_record(r) for r in rows]


async def get(conn: asyncpg.Connection, tenant_id: str, call_id: str, tool_call_id: str) -> ToolCallRecord | None:
    row = await conn.fetchrow(
        f"SELECT {COLUMNS} FROM tool_calls t WHERE t.tenant_id = $1 AND t.call_id = $2 AND t.tool_call_id = $3",
        tenant_id, call_id, tool_call_id,
    )
    return _record(row) if row else None


def _record(row: asyncpg.Record) -> ToolCallRecord:
    columns = dict(row)
    for name in ("arguments", "result"):
        if isinstance(columns[name], str):
            columns[name] = json.loads(columns[name])
    return ToolCallRecord(**columns)
