"""Tenant secrets: sealed values (SecretBox ciphertext bound to tenant and name), never the plaintext."""

from __future__ import annotations

import asyncpg

from ..models import TenantSecret
from . import row_as

COLUMNS = "tenant_id, name, created_at, updated_at"


async def put(conn: asyncpg.Connection, tenant_id: str, name: str, sealed: bytes) -> tuple[TenantSecret, bool]:
    """Create or replace; True when it was created."""
    row = await conn.fetchrow(
        f"""
        INSERT INTO tenant_secrets (tenant_id, name, sealed) VALUES ($1, $2, $3)
        ON CONFLICT (tenant_id, name) DO UPDATE SET sealed = EXCLUDED.sealed, updated_at = now()
        RETURNING {COLUMNS}, (xmax = 0) AS created
        """,
        tenant_id,
        name,
        sealed,
    )
    columns = dict(row)
    created = bool(columns.pop("created"))
    return TenantSecret(**columns), created


async def get(conn: asyncpg.Connection, tenant_id: str, name: str, *, lock: str | None = None) -> TenantSecret | None:
    """``lock``: None, "share" (it must outlive this transaction: a reference to it is being written) or
    "update" (it is being deleted)."""
    clause = {None: "", "share": " FOR SHARE", "update": " FOR UPDATE"}[lock]
    row = await conn.fetchrow(
        f"SELECT {COLUMNS} FROM tenant_secrets WHERE tenant_id = $1 AND name = $2{clause}", tenant_id, name
    )
    return row_as(TenantSecret, row) if row else None


async def list_(conn: asyncpg.Connection, tenant_id: str, *, limit: int, offset: int) -> list[TenantSecret]:
    rows = await conn.fetch(
        f"SELECT {COLUMNS} FROM tenant_secrets WHERE tenant_id = $1 ORDER BY name LIMIT $2 OFFSET $3",
        tenant_id,
        limit,
        offset,
    )
    return [row_as(TenantSecret, r) for r in rows]


async def delete(conn: asyncpg.Connection, tenant_id: str, name: str) -> None:
    await conn.execute("DELETE FROM tenant_secrets WHERE tenant_id = $1 AND name = $2", tenant_id, name)


async def sealed(conn: asyncpg.Connection, tenant_id: str, name: str) -> bytes | None:
    value = await conn.fetchval("SELECT sealed FROM tenant_secrets WHERE tenant_id = $1 AND name = $2", tenant_id, name)
    return bytes(value) if value is not None else None


async def all_sealed(conn: asyncpg.Connection) -> dict[tuple[str, str], bytes]:
    """Every secret's sealed value by (tenant_id, name), for the KV resync."""
    rows = await conn.fetch("SELECT tenant_id, name, sealed FROM tenant_secrets")
    return {(r["tenant_id"], r["name"]): bytes(r["sealed"]) for r in rows}


async def take_turn(conn: asyncpg.Connection, tenant_id: str, name: str) -> None:
    """Wait for the other transactions holding this secret's turn (a transaction-scoped advisory lock, which
    works whether or not the row exists)."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('tenant_secret:' || $1 || '/' || $2, 0))", tenant_id, name
    )
