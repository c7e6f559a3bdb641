"""Call recordings as analytics records them (``call_recordings``); the objects live in the recording store."""

from __future__ import annotations

import asyncpg


async def get(conn: asyncpg.Connection, tenant_id: str, call_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT call_id, status, object_key, duration_s, size_bytes, created_at, expires_at FROM call_recordings"
        " WHERE tenant_id = $1 AND call_id = $2",
        tenant_id,
        call_id,
    )
