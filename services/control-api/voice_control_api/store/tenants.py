"""Tenants."""

from __future__ import annotations

import asyncpg

from ..models import Tenant
from . import row_as

COLUMNS = "id, name, created_at, updated_at, version"


async def create(conn: asyncpg.Connection, tenant_id: str, name: str) -> Tenant:
    row = await conn.fetchrow(f"INSERT INTO tenants (id, name) VALUES ($1, $2) RETURNING {COLUMNS}", tenant_id, name)
    return row_as(Tenant, row)


async def ensure(conn: asyncpg.Connection, tenant_id: str, name: str) -> bool:
    """Create the tenant when missing; True when it was created now."""
    status = await conn.execute(
        "INSERT INTO tenants (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING", tenant_id, name
    )
    return status.endswith(" 1")


async def get(conn: asyncpg.Connection, tenant_id: str, *, for_update: bool = False) -> Tenant | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(f"SELECT {COLUMNS} FROM tenants WHERE id = $1{lock}", tenant_id)
    return row_as(Tenant, row) if row else None


async def list_(
    conn: asyncpg.Connection, *, only_id: str | None, name: str | None, limit: int, offset: int
) -> list[Tenant]:
    rows = await conn.fetch(
        f"""
        SELECT {COLUMNS} FROM tenants
        WHERE ($1::text IS NULL OR id = $1)
          AND ($2::text IS NULL OR strpos(lower(name), lower($2)) > 0)
        ORDER BY created_at, id LIMIT $3 OFFSET $4
        """,
        only_id,
        name,
        limit,
        offset,
    )
    return [row_as(Tenant, r) for r in rows]


async def rename(conn: asyncpg.Connection, tenant_id: str, name: str) -> Tenant:
    row = await conn.fetchrow(
        f"UPDATE tenants SET name = $2, updated_at = now(), version = version + 1 WHERE id = $1 RETURNING {COLUMNS}",
        tenant_id,
        name,
    )
    return row_as(Tenant, row)


async def transfer_allow_list(conn: asyncpg.Connection, tenant_id: str) -> list[str]:
    """The tenant's transfer allow-list patterns, in the order they were set."""
    rows = await conn.fetch(
        "SELECT pattern FROM transfer_allow_list WHERE tenant_id = $1 ORDER BY position, pattern", tenant_id
    )
    return [r["pattern"] for r in rows]


async def replace_transfer_allow_list(conn: asyncpg.Connection, tenant_id: str, patterns: list[str]) -> None:
    """Replace the tenant's transfer allow-list with ``patterns`` (distinct, already validated)."""
    await conn.execute("DELETE FROM transfer_allow_list WHERE tenant_id = $1", tenant_id)
    await conn.executemany(
        "INSERT INTO transfer_allow_list (tenant_id, pattern, position) VALUES ($1, $2, $3)",
        [(tenant_id, p, i) for i, p in enumerate(patterns)],
    )
