"""Webhook endpoints of a tenant (deliveries are made by analytics)."""

from __future__ import annotations

from typing import Any

import asyncpg

COLUMNS = "id, tenant_id, url, events, description, is_active, created_at, updated_at, version"


async def create(
    conn: asyncpg.Connection,
    *,
    webhook_id: str,
    tenant_id: str,
    url: str,
    events: list[str],
    secret: str,
    description: str | None,
    is_active: bool,
) -> dict[str, Any]:
    row = await conn.fetchrow(
        f"""
        INSERT INTO webhooks (id, tenant_id, url, events, secret, description, is_active)
        VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}, secret
        """,
        webhook_id,
        tenant_id,
        url,
        events,
        secret,
        description,
        is_active,
    )
    return dict(row)


async def get(
    conn: asyncpg.Connection, tenant_id: str, webhook_id: str, *, for_update: bool = False
) -> dict[str, Any] | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(
        f"SELECT {COLUMNS} FROM webhooks WHERE tenant_id = $1 AND id = $2{lock}", tenant_id, webhook_id
    )
    return dict(row) if row else None


async def list_(
    conn: asyncpg.Connection, tenant_id: str, *, is_active: bool | None, event: str | None, limit: int, offset: int
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"""
        SELECT {COLUMNS} FROM webhooks
        WHERE tenant_id = $1 AND ($2::bool IS NULL OR is_active = $2) AND ($3::text IS NULL OR $3 = ANY(events))
        ORDER BY created_at, id LIMIT $4 OFFSET $5
        """,
        tenant_id,
        is_active,
        event,
        limit,
        offset,
    )
    return [dict(r) for r in rows]


async def update(conn: asyncpg.Connection, tenant_id: str, webhook_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    allowed = {"url", "events", "description", "is_active", "secret"}
    cols = [c for c in changes if c in allowed]
    sets = ", ".join(f"{c} = ${i + 3}" for i, c in enumerate(cols))
    sets = (sets + ", " if sets else "") + "updated_at = now(), version = version + 1"
    row = await conn.fetchrow(
        f"UPDATE webhooks SET {sets} WHERE tenant_id = $1 AND id = $2 RETURNING {COLUMNS}, secret",
        tenant_id,
        webhook_id,
        *(changes[c] for c in cols),
    )
    return dict(row)


async def delete(conn: asyncpg.Connection, tenant_id: str, webhook_id: str) -> None:
    await conn.execute("DELETE FROM webhooks WHERE tenant_id = $1 AND id = $2", tenant_id, webhook_id)
