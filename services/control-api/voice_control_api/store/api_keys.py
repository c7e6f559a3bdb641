"""API keys (stored as SHA-256 hashes; the secret itself is never stored)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from ..models import ApiKey
from ..security import Role
from . import row_as

COLUMNS = (
    "id, tenant_id, name, prefix, role, user_id, platform_admin, created_by, created_at, expires_at, "
    "last_used_at, revoked_at"
)


@dataclass(frozen=True)
class KeyState:
    id: str
    tenant_id: str
    revoked_at: datetime | None
    source: str


@dataclass(frozen=True)
class KeyCredential:
    """A key found by its prefix, with what decides whether it may be used now."""

    id: str
    tenant_id: str
    key_hash: str
    role: Role
    user_id: str | None
    platform_admin: bool
    revoked_at: datetime | None
    expired: bool
    touch: bool  # last_used_at is older than the resolution asked for
    user_active: bool | None
    user_tenant: str | None


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
) -> ApiKey:
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
    return row_as(ApiKey, row)


async def get(conn: asyncpg.Connection, tenant_id: str, key_id: str) -> ApiKey | None:
    row = await conn.fetchrow(f"SELECT {COLUMNS} FROM api_keys WHERE tenant_id = $1 AND id = $2", tenant_id, key_id)
    return row_as(ApiKey, row) if row else None


async def by_hash(conn: asyncpg.Connection, key_hash: str) -> KeyState | None:
    row = await conn.fetchrow("SELECT id, tenant_id, revoked_at, source FROM api_keys WHERE key_hash = $1", key_hash)
    return row_as(KeyState, row) if row else None


async def credential(conn: asyncpg.Connection, prefix: str, *, touch_after_s: int) -> KeyCredential | None:
    """The key with this prefix; ``touch`` says its last_used_at is older than ``touch_after_s``."""
    row = await conn.fetchrow(
        """
        SELECT k.id, k.tenant_id, k.key_hash, k.role, k.user_id, k.platform_admin, k.revoked_at,
               (k.expires_at IS NOT NULL AND k.expires_at <= now()) AS expired,
               (k.last_used_at IS NULL OR k.last_used_at < now() - make_interval(secs => $2)) AS touch,
               u.is_active AS user_active, u.tenant_id AS user_tenant
        FROM api_keys k LEFT JOIN users u ON u.id = k.user_id
        WHERE k.prefix = $1
        """,
        prefix,
        touch_after_s,
    )
    return row_as(KeyCredential, row) if row else None


async def touch(conn: asyncpg.Connection, key_id: str) -> None:
    await conn.execute("UPDATE api_keys SET last_used_at = now() WHERE id = $1", key_id)


async def list_(
    conn: asyncpg.Connection, tenant_id: str, *, include_revoked: bool, role: str | None, limit: int, offset: int
) -> list[ApiKey]:
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
    return [row_as(ApiKey, r) for r in rows]


async def revoke(conn: asyncpg.Connection, tenant_id: str, key_id: str) -> ApiKey | None:
    row = await conn.fetchrow(
        f"""
        UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now())
        WHERE tenant_id = $1 AND id = $2 RETURNING {COLUMNS}
        """,
        tenant_id,
        key_id,
    )
    return row_as(ApiKey, row) if row else None


async def revoke_other_bootstrap_keys(conn: asyncpg.Connection, keep_hash: str) -> list[str]:
    rows = await conn.fetch(
        """
        UPDATE api_keys SET revoked_at = now()
        WHERE source = 'bootstrap' AND key_hash <> $1 AND revoked_at IS NULL RETURNING id
        """,
        keep_hash,
    )
    return [r["id"] for r in rows]
