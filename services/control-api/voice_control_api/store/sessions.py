"""Web console sessions: the SHA-256 of each cookie's token, and who the session acts as (a user or an API key)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from .api_keys import KeyCredential
from .users import UserStatus


@dataclass(frozen=True)
class SessionRow:
    """A session found by its token's hash, with the user or the key it acts as, read in the same query."""

    id: str
    tenant_id: str
    expired: bool
    revoked_at: datetime | None
    user: UserStatus | None
    key: KeyCredential | None


async def create(
    conn: asyncpg.Connection,
    *,
    session_hash: str,
    tenant_id: str,
    user_id: str | None,
    api_key_id: str | None,
    expires_at: datetime,
) -> None:
    await conn.execute(
        "INSERT INTO console_sessions (id, tenant_id, user_id, api_key_id, expires_at) VALUES ($1, $2, $3, $4, $5)",
        session_hash,
        tenant_id,
        user_id,
        api_key_id,
        expires_at,
    )


async def get(conn: asyncpg.Connection, session_hash: str) -> SessionRow | None:
    row = await conn.fetchrow(
        """
        SELECT s.id, s.tenant_id, s.expires_at <= now() AS expired, s.revoked_at, s.user_id, s.api_key_id,
               u.tenant_id AS u_tenant_id, u.role AS u_role, u.is_active AS u_is_active,
               u.platform_admin AS u_platform_admin,
               k.tenant_id AS k_tenant_id, k.key_hash AS k_key_hash, k.role AS k_role, k.user_id AS k_user_id,
               k.platform_admin AS k_platform_admin, k.revoked_at AS k_revoked_at,
               (k.expires_at IS NOT NULL AND k.expires_at <= now()) AS k_expired,
               ku.is_active AS k_user_active, ku.tenant_id AS k_user_tenant
        FROM console_sessions s
        LEFT JOIN users u ON u.id = s.user_id
        LEFT JOIN api_keys k ON k.id = s.api_key_id
        LEFT JOIN users ku ON ku.id = k.user_id
        WHERE s.id = $1
        """,
        session_hash,
    )
    if row is None:
        return None
    user = key = None
    if row["user_id"] is not None and row["u_tenant_id"] is not None:
        user = UserStatus(
            id=row["user_id"],
            tenant_id=row["u_tenant_id"],
            role=row["u_role"],
            is_active=row["u_is_active"],
            platform_admin=row["u_platform_admin"],
        )
    if row["api_key_id"] is not None and row["k_tenant_id"] is not None:
        key = KeyCredential(
            id=row["api_key_id"],
            tenant_id=row["k_tenant_id"],
            key_hash=row["k_key_hash"],
            role=row["k_role"],
            user_id=row["k_user_id"],
            platform_admin=row["k_platform_admin"],
            revoked_at=row["k_revoked_at"],
            expired=row["k_expired"],
            touch=False,
            user_active=row["k_user_active"],
            user_tenant=row["k_user_tenant"],
        )
    return SessionRow(
        id=row["id"],
        tenant_id=row["tenant_id"],
        expired=row["expired"],
        revoked_at=row["revoked_at"],
        user=user,
        key=key,
    )


async def revoke(conn: asyncpg.Connection, session_hash: str) -> None:
    await conn.execute(
        "UPDATE console_sessions SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", session_hash
    )


async def prune(conn: asyncpg.Connection) -> None:
    """Sessions past their expiry, or signed out more than a day ago, go."""
    await conn.execute("DELETE FROM console_sessions WHERE expires_at < now() OR revoked_at < now() - interval '1 day'")
