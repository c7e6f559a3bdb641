"""Webhook endpoints of a tenant (deliveries are made by analytics)."""

from __future__ import annotations

from typing import Any

import asyncpg

from ..models import Webhook, WebhookWithSecret
from . import pick, row_as, set_clause

COLUMNS = "id, tenant_id, url, events, description, is_active, created_at, updated_at, version"
_UPDATABLE = frozenset({"url", "events", "description", "is_active", "secret"})


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
) -> WebhookWithSecret:
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
    return row_as(WebhookWithSecret, row)


async def get(conn: asyncpg.Connection, tenant_id: str, webhook_id: str, *, for_update: bool = False) -> Webhook | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(
        f"SELECT {COLUMNS} FROM webhooks WHERE tenant_id = $1 AND id = $2{lock}", tenant_id, webhook_id
    )
    return row_as(Webhook, row) if row else None


async def list_(
    conn: asyncpg.Connection, tenant_id: str, *, is_active: bool | None, event: str | None, limit: int, offset: int
) -> list[Webhook]:
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
    return [row_as(Webhook, r) for r in rows]


async def update(
    conn: asyncpg.Connection, tenant_id: str, webhook_id: str, changes: dict[str, Any]
) -> WebhookWithSecret:
    """``changes``: column -> new value, of url, events, description, is_active and secret."""
    cols = pick(changes, _UPDATABLE)
    row = await conn.fetchrow(
        f"UPDATE webhooks SET {set_clause(cols, 3)} WHERE tenant_id = $1 AND id = $2 RETURNING {COLUMNS}, secret",
        tenant_id,
        webhook_id,
        *(changes[c] for c in cols),
    )
    return row_as(WebhookWithSecret, row)


async def delete(conn: asyncpg.Connection, tenant_id: str, webhook_id: str) -> None:
    await conn.execute("DELETE FROM webhooks WHERE tenant_id = $1 AND id = $2", tenant_id, webhook_id)
