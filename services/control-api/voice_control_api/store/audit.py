"""The audit log: entries are appended in the transaction of the change they record, and read by admins."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg

from ..models import AuditEntry


async def append(
    conn: asyncpg.Connection,
    *,
    tenant_id: str,
    actor_type: str,
    actor_id: str | None,
    action: str,
    resource_type: str,
    resource_id: str | None,
    request_id: str | None,
    details: dict[str, Any],
) -> None:
    await conn.execute(
        """
        INSERT INTO audit_log (tenant_id, actor_type, actor_id, action, resource_type, resource_id,
                               request_id, details)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)
        """,
        tenant_id,
        actor_type,
        actor_id,
        action,
        resource_type,
        resource_id,
        request_id,
        json.dumps(details, default=str),
    )


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
) -> list[AuditEntry]:
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
    return [AuditEntry.model_validate({**dict(r), "details": json.loads(r["details"])}) for r in rows]
