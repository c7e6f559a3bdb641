"""Platform-wide secrets that every replica shares (e.g. the JWT signing secret)."""

from __future__ import annotations

import asyncpg


async def ensure(conn: asyncpg.Connection, name: str, value: str) -> str:
    """The secret ``name``; stored as ``value`` first when it does not exist yet."""
    await conn.execute(
        "INSERT INTO platform_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING", name, value
    )
    return str(await conn.fetchval("SELECT value FROM platform_secrets WHERE name = $1", name))
