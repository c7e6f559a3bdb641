"""Phone numbers routed to agents (unique across the platform)."""

from __future__ import annotations

import asyncpg
from voice_schemas.agent import NumberRoute

from ..models import PhoneNumber
from . import row_as

COLUMNS = "p.id, p.tenant_id, p.number, p.agent_id, p.created_at, p.updated_at, p.version"
_RETURNING = "RETURNING id, tenant_id, number, agent_id, created_at, updated_at, version"
_FROM = "FROM phone_numbers p JOIN agents a ON a.id = p.agent_id"


async def create(
    conn: asyncpg.Connection, *, number_id: str, tenant_id: str, number: str, agent_id: str
) -> PhoneNumber:
    row = await conn.fetchrow(
        f"INSERT INTO phone_numbers (id, tenant_id, number, agent_id) VALUES ($1, $2, $3, $4) {_RETURNING}",
        number_id,
        tenant_id,
        number,
        agent_id,
    )
    return row_as(PhoneNumber, row)


async def get(
    conn: asyncpg.Connection, tenant_id: str, number_id: str, *, owner: str | None = None, for_update: bool = False
) -> PhoneNumber | None:
    if for_update:  # lock the row alone (see agents.get), then read it with its agent
        locked = await conn.fetchval(
            "SELECT id FROM phone_numbers WHERE tenant_id = $1 AND id = $2 FOR UPDATE", tenant_id, number_id
        )
        if locked is None:
            return None
    row = await conn.fetchrow(
        f"""SELECT {COLUMNS} {_FROM}
        WHERE p.tenant_id = $1 AND p.id = $2 AND ($3::text IS NULL OR a.owner_user_id = $3)""",
        tenant_id,
        number_id,
        owner,
    )
    return row_as(PhoneNumber, row) if row else None


async def list_(
    conn: asyncpg.Connection,
    tenant_id: str,
    *,
    owner: str | None,
    agent_id: str | None,
    number: str | None,
    limit: int,
    offset: int,
) -> list[PhoneNumber]:
    rows = await conn.fetch(
        f"""SELECT {COLUMNS} {_FROM}
        WHERE p.tenant_id = $1 AND ($2::text IS NULL OR a.owner_user_id = $2)
          AND ($3::text IS NULL OR p.agent_id = $3) AND ($4::text IS NULL OR p.number = $4)
        ORDER BY p.created_at, p.id LIMIT $5 OFFSET $6""",
        tenant_id,
        owner,
        agent_id,
        number,
        limit,
        offset,
    )
    return [row_as(PhoneNumber, r) for r in rows]


async def update(
    conn: asyncpg.Connection, tenant_id: str, number_id: str, *, number: str, agent_id: str
) -> PhoneNumber:
    row = await conn.fetchrow(
        f"""
        UPDATE phone_numbers SET number = $3, agent_id = $4, updated_at = now(), version = version + 1
        WHERE tenant_id = $1 AND id = $2 {_RETURNING}
        """,
        tenant_id,
        number_id,
        number,
        agent_id,
    )
    return row_as(PhoneNumber, row)


async def delete(conn: asyncpg.Connection, tenant_id: str, number_id: str) -> None:
    await conn.execute("DELETE FROM phone_numbers WHERE tenant_id = $1 AND id = $2", tenant_id, number_id)


async def all_routes(conn: asyncpg.Connection) -> list[NumberRoute]:
    rows = await conn.fetch("SELECT number, tenant_id, agent_id FROM phone_numbers ORDER BY number")
    return [NumberRoute(number=r["number"], tenant_id=r["tenant_id"], agent_id=r["agent_id"]) for r in rows]
