"""Reading the audit log (entries are written by ``voice_control_api.audit``)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg


async def list_(
    conn: asyncpg.Connection,
    tenant_id: str,
    *,
    resource_type: str | None,
    resource_id: str | None,
    action: str | None,
    actor_id: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    offset: int,
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """
        SELECT id, at, actor_type, actor_id, action, resource_type, resource_id, request_id, details
        FROM audit_log
        WHERE tenant_id = $1 AND ($2::text IS NULL OR resource_type = $2) AND ($3::text IS NULL OR resource_id = $3)
          AND ($4::text IS NULL OR action = $4) AND ($5::text IS NULL OR actor_id = $5)
          AND ($6::timestamptz IS NULL OR at >= $6) AND ($7::timestamptz IS NULL OR at < $7)
        ORDER BY id DESC LIMIT $8 OFFSET $9
        """,
        tenant_id,
        resource_type,
        resource_id,
        action,
        actor_id,
        since,
        until,
        limit,
        offset,
    )
    return [{**dict(r), "details": json.loads(r["details"])} for r in rows]
