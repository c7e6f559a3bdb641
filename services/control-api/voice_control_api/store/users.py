"""Users of a tenant (console logins) and their refresh tokens."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from ..models import User
from ..security import Role
from . import pick, row_as, set_clause

COLUMNS = "id, tenant_id, email, name, role, is_active, created_at, updated_at, version"
_UPDATABLE = frozenset({"name", "role", "is_active", "password_hash"})


@dataclass(frozen=True)
class UserStatus:
    """What every request re-reads about the user behind an access token."""

    id: str
    tenant_id: str
    role: Role
    is_active: bool
    platform_admin: bool


@dataclass(frozen=True)
class Credentials(UserStatus):
    password_hash: str | None


@dataclass(frozen=True)
class RefreshTokenRow:
    id: str
    user_id: str
    tenant_id: str
    revoked_at: datetime | None
    expired: bool
    role: Role
    is_active: bool


async def create(
    conn: asyncpg.Connection,
    *,
    user_id: str,
    tenant_id: str,
    email: str,
    name: str | None,
    role: str,
    password_hash: str,
    platform_admin: bool = False,
) -> User:
    row = await conn.fetchrow(
        f"""
        INSERT INTO users (id, tenant_id, email, name, role, password_hash, platform_admin)
        VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}
        """,
        user_id,
        tenant_id,
        email,
        name,
        role,
        password_hash,
        platform_admin,
    )
    return row_as(User, row)


async def get(conn: asyncpg.Connection, tenant_id: str, user_id: str, *, for_update: bool = False) -> User | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(f"SELECT {COLUMNS} FROM users WHERE tenant_id = $1 AND id = $2{lock}", tenant_id, user_id)
    return row_as(User, row) if row else None


async def status(conn: asyncpg.Connection, user_id: str) -> UserStatus | None:
    row = await conn.fetchrow("SELECT id, tenant_id, role, is_active, platform_admin FROM users WHERE id = $1", user_id)
    return row_as(UserStatus, row) if row else None


async def credentials_by_email(conn: asyncpg.Connection, email: str) -> Credentials | None:
    row = await conn.fetchrow(
        """
        SELECT id, tenant_id, role, is_active, platform_admin, password_hash FROM users
        WHERE lower(email) = lower($1)
        """,
        email,
    )
    return row_as(Credentials, row) if row else None


async def any_user(conn: asyncpg.Connection) -> bool:
    """Whether the platform has any console user at all (in any tenant)."""
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM users)"))


async def password_hash(conn: asyncpg.Connection, user_id: str) -> str | None:
    value = await conn.fetchval("SELECT password_hash FROM users WHERE id = $1", user_id)
    return str(value) if value is not None else None


async def set_password_hash(conn: asyncpg.Connection, user_id: str, password_hash: str) -> None:
    await conn.execute(
        "UPDATE users SET password_hash = $2, updated_at = now(), version = version + 1 WHERE id = $1",
        user_id,
        password_hash,
    )


async def list_(
    conn: asyncpg.Connection,
    tenant_id: str,
    *,
    role: str | None,
    is_active: bool | None,
    email: str | None,
    limit: int,
    offset: int,
) -> list[User]:
    rows = await conn.fetch(
        f"""
        SELECT {COLUMNS} FROM users
        WHERE tenant_id = $1 AND ($2::text IS NULL OR role = $2) AND ($3::bool IS NULL OR is_active = $3)
          AND ($4::text IS NULL OR lower(email) = lower($4))
        ORDER BY created_at, id LIMIT $5 OFFSET $6
        """,
        tenant_id,
        role,
        is_active,
        email,
        limit,
        offset,
    )
    return [row_as(User, r) for r in rows]


async def update(conn: asyncpg.Connection, tenant_id: str, user_id: str, changes: dict[str, Any]) -> User:
    """``changes``: column -> new value, of name, role, is_active and password_hash."""
    cols = pick(changes, _UPDATABLE)
    row = await conn.fetchrow(
        f"UPDATE users SET {set_clause(cols, 3)} WHERE tenant_id = $1 AND id = $2 RETURNING {COLUMNS}",
        tenant_id,
        user_id,
        *(changes[c] for c in cols),
    )
    return row_as(User, row)


async def delete(conn: asyncpg.Connection, tenant_id: str, user_id: str) -> None:
    await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL", user_id)
    await conn.execute("DELETE FROM users WHERE tenant_id = $1 AND id = $2", tenant_id, user_id)


# ------------------------------------------------------------------ refresh tokens
async def add_refresh_token(
    conn: asyncpg.Connection,
    *,
    token_id: str,
    user_id: str,
    tenant_id: str,
    token_hash: str,
    expires_at: datetime,
) -> None:
    await conn.execute(
        "INSERT INTO refresh_tokens (id, user_id, tenant_id, token_hash, expires_at) VALUES ($1, $2, $3, $4, $5)",
        token_id,
        user_id,
        tenant_id,
        token_hash,
        expires_at,
    )


async def refresh_token(conn: asyncpg.Connection, token_hash: str) -> RefreshTokenRow | None:
    row = await conn.fetchrow(
        """
        SELECT t.id, t.user_id, t.tenant_id, t.revoked_at, t.expires_at <= now() AS expired,
               u.role, u.is_active
        FROM refresh_tokens t JOIN users u ON u.id = t.user_id
        WHERE t.token_hash = $1 FOR UPDATE OF t
        """,
        token_hash,
    )
    return row_as(RefreshTokenRow, row) if row else None


async def revoke_refresh_token(conn: asyncpg.Connection, token_id: str) -> None:
    await conn.execute("UPDATE refresh_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", token_id)


async def revoke_user_refresh_tokens(conn: asyncpg.Connection, user_id: str) -> None:
    """Every way the user stays signed in ends: refresh tokens and web console sessions."""
    await conn.execute(
        "UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL", user_id
    )
    await conn.execute(
        "UPDATE console_sessions SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL", user_id
    )


async def prune_refresh_tokens(conn: asyncpg.Connection, user_id: str) -> None:
    """Expired tokens go; revoked ones are kept a day so a replayed one is still recognised as reuse."""
    await conn.execute(
        """
        DELETE FROM refresh_tokens
        WHERE user_id = $1 AND (expires_at < now() OR revoked_at < now() - interval '1 day')
        """,
        user_id,
    )
