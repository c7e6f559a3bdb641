"""API keys (stored as SHA-256 hashes; the secret itself is never stored)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

COLUMNS = (
    "id, tenant_id, name, prefix, role, user_id, platform_admin, created_by, created_at, expires_at, "
    "last_used_at, revoked_at"
)


async def create(
    conn: asyncpg.Connection,
    *,
    key_id: str,
    tenant_id: str,
    name: str,
    prefix: str,
    key_hash: str,
    role: str,
    user_id: str | None = None,
    platform_admin: bool = False,
    source: str = "api",
    created_by: str | None = None,
    expires_at: datetime | None = None,
) -> dict[str, Any]:
    row = await conn.fetchrow(
        f"""
        INSERT INTO api_keys (id, tenant_id, name, prefix, key_hash, role, user_id, platform_admin, source,
                              created_by, expires_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING {COLUMNS}
        """,
        key_id,
        tenant_id,
        name,
        prefix,
        key_hash,
        role,
        user_id,
        platform_admin,
        source,
        created_by,
        expires_at,
    )
    return dict(row)


async def get(conn: asyncpg.Connection, tenant_id: str, key_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(f"SELECT {COLUMNS} FROM api_keys WHERE tenant_id = $1 AND id = $2", tenant_id, key_id)
    return dict(row) if row else None


async def by_hash(conn: asyncpg.Connection, key_hash: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT id, tenant_id, revoked_at, source FROM api_keys WHERE key_hash = $1", key_hash)


async def list_(
    conn: asyncpg.Connection, tenant_id: str, *, include_revoked: bool, role: str | None, limit: int, offset: int
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"""
        SELECT {COLUMNS} FROM api_keys
        WHERE tenant_id = $1 AND ($2 OR revoked_at IS NULL) AND ($3::text IS NULL OR role = $3)
        ORDER BY created_at, id LIMIT $4 OFFSET $5
        """,
        tenant_id,
        include_revoked,
        role,
        limit,
        offset,
    )
    return [dict(r) for r in rows]


async def revoke(conn: asyncpg.Connection, tenant_id: str, key_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        f"""
        UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now())
        WHERE tenant_id = $1 AND id = $2 RETURNING {COLUMNS}
        """,
        tenant_id,
        key_id,
    )
    return dict(row) if row else None


async def revoke_other_bootstrap_keys(conn: asyncpg.Connection, keep_hash: str) -> list[str]:
    rows = await conn.fetch(
        """
        UPDATE api_keys SET revoked_at = now()
        WHERE source = 'bootstrap' AND key_hash <> $1 AND revoked_at IS NULL RETURNING id
        """,
        keep_hash,
    )
    return [r["id"] for r in rows]
