"""Webhook endpoints of a tenant and their delivery log (deliveries are made by analytics from
``webhook_deliveries``). Secrets are stored sealed (``secret_sealed``); the use case seals and returns them."""

from __future__ import annotations

from typing import Any

import asyncpg

from ..models import Webhook, WebhookAttempt, WebhookDelivery
from . import pick, row_as, set_clause

COLUMNS = "id, tenant_id, url, events, description, is_active, disabled_reason, created_at, updated_at, version"
_UPDATABLE = frozenset({"url", "events", "description", "is_active", "disabled_reason", "secret_sealed"})
DELIVERY_COLUMNS = (
    "id, webhook_id, event_id, event_type, call_id, status, attempts, next_attempt_at, last_status, last_error,"
    " created_at, updated_at, delivered_at"
)
ATTEMPTS_SHOWN = 20


async def create(
    conn: asyncpg.Connection,
    *,
    webhook_id: str,
    tenant_id: str,
    url: str,
    events: list[str],
    secret_sealed: bytes,
    description: str | None,
    is_active: bool,
) -> Webhook:
    row = await conn.fetchrow(
        f"""
        INSERT INTO webhooks (id, tenant_id, url, events, secret_sealed, description, is_active)
        VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}
        """,
        webhook_id,
        tenant_id,
        url,
        events,
        secret_sealed,
        description,
        is_active,
    )
    return row_as(Webhook, row)


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


async def update(conn: asyncpg.Connection, tenant_id: str, webhook_id: str, changes: dict[str, Any]) -> Webhook:
    """``changes``: column -> new value, of url, events, description, is_active, disabled_reason and
    secret_sealed (which also clears a readable secret of an earlier release)."""
    cols = pick(changes, _UPDATABLE)
    extra = ", secret = NULL" if "secret_sealed" in cols else ""
    row = await conn.fetchrow(
        f"UPDATE webhooks SET {set_clause(cols, 3)}{extra} WHERE tenant_id = $1 AND id = $2 RETURNING {COLUMNS}",
        tenant_id,
        webhook_id,
        *(changes[c] for c in cols),
    )
    return row_as(Webhook, row)


async def delete(conn: asyncpg.Connection, tenant_id: str, webhook_id: str) -> None:
    await conn.execute("DELETE FROM webhooks WHERE tenant_id = $1 AND id = $2", tenant_id, webhook_id)


# ------------------------------------------------------------------ delivery log
async def _attempts(
    conn: asyncpg.Connection, tenant_id: str, delivery_ids: list[str]
) -> dict[str, list[WebhookAttempt]]:
    rows = await conn.fetch(
        """
        SELECT delivery_id, at, status, error, duration_ms, retry_after_s FROM (
            SELECT *, row_number() OVER (PARTITION BY delivery_id ORDER BY id DESC) AS n
            FROM webhook_attempts WHERE tenant_id = $1 AND delivery_id = ANY($2::text[])
        ) a WHERE n <= $3 ORDER BY delivery_id, id
        """,
        tenant_id,
        delivery_ids,
        ATTEMPTS_SHOWN,
    )
    out: dict[str, list[WebhookAttempt]] = {}
    for r in rows:
        fields = dict(r)
        out.setdefault(fields.pop("delivery_id"), []).append(WebhookAttempt(**fields))
    return out


async def _deliveries(conn: asyncpg.Connection, tenant_id: str, rows: list[asyncpg.Record]) -> list[WebhookDelivery]:
    attempts = await _attempts(conn, tenant_id, [r["id"] for r in rows])
    return [WebhookDelivery(**dict(r), attempt_log=attempts.get(r["id"], [])) for r in rows]


async def list_deliveries(
    conn: asyncpg.Connection,
    tenant_id: str,
    webhook_id: str,
    *,
    status: str | None,
    event_type: str | None,
    limit: int,
    offset: int,
) -> list[WebhookDelivery]:
    """Newest first."""
    rows = await conn.fetch(
        f"""
        SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries
        WHERE tenant_id = $1 AND webhook_id = $2 AND ($3::text IS NULL OR status = $3)
          AND ($4::text IS NULL OR event_type = $4)
        ORDER BY created_at DESC, id LIMIT $5 OFFSET $6
        """,
        tenant_id,
        webhook_id,
        status,
        event_type,
        limit,
        offset,
    )
    return await _deliveries(conn, tenant_id, list(rows))


async def get_delivery(
    conn: asyncpg.Connection, tenant_id: str, webhook_id: str, delivery_id: str, *, for_update: bool = False
) -> WebhookDelivery | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(
        f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE tenant_id = $1 AND webhook_id = $2 AND id = $3{lock}",
        tenant_id,
        webhook_id,
        delivery_id,
    )
    return (await _deliveries(conn, tenant_id, [row]))[0] if row else None


async def redeliver(conn: asyncpg.Connection, tenant_id: str, delivery_id: str) -> None:
    """A new round of attempts, due now, with the same message id."""
    await conn.execute(
        "UPDATE webhook_deliveries SET status = 'pending', step = 0, next_attempt_at = now(), updated_at = now()"
        " WHERE tenant_id = $1 AND id = $2",
        tenant_id,
        delivery_id,
    )
