"""SIP trunks per tenant (config JSON: ``voice_schemas.agent.SipTrunk`` less id and tenant), and the tenant's
outbound-call allow-list."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
from voice_schemas.agent import SipTrunk

from ..models_trunks import SipTrunkOut

_COLUMNS = "id, tenant_id, name, config, created_at, updated_at, version"


def _out(row: asyncpg.Record) -> SipTrunkOut:
    columns = dict(row)
    config = json.loads(columns.pop("config"))
    return SipTrunkOut.model_validate({**config, **columns})


async def create(
    conn: asyncpg.Connection, *, trunk_id: str, tenant_id: str, name: str, config: dict[str, Any]
) -> SipTrunkOut:
    row = await conn.fetchrow(
        f"INSERT INTO sip_trunks (id, tenant_id, name, config) VALUES ($1, $2, $3, $4) RETURNING {_COLUMNS}",
        trunk_id, tenant_id, name, json.dumps(config),
    )
    return _out(row)


async def get(
    conn: asyncpg.Connection, tenant_id: str, trunk_id: str, *, for_update: bool = False
) -> SipTrunkOut | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM sip_trunks WHERE tenant_id = $1 AND id = $2{lock}", tenant_id, trunk_id
    )
    return _out(row) if row else None


async def list_(conn: asyncpg.Connection, tenant_id: str, *, limit: int, offset: int) -> list[SipTrunkOut]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM sip_trunks WHERE tenant_id = $1 ORDER BY created_at, id LIMIT $2 OFFSET $3",
        tenant_id, limit, offset,
    )
    return [_out(r) for r in rows]


async def update(
    conn: asyncpg.Connection, tenant_id: str, trunk_id: str, *, name: str, config: dict[str, Any]
) -> SipTrunkOut:
    row = await conn.fetchrow(
        f"""UPDATE sip_trunks SET name = $3, config = $4, updated_at = now(), version = version + 1
        WHERE tenant_id = $1 AND id = $2 RETURNING {_COLUMNS}""",
        tenant_id, trunk_id, name, json.dumps(config),
    )
    return _out(row)


async def delete(conn: asyncpg.Connection, tenant_id: str, trunk_id: str) -> None:
    await conn.execute("DELETE FROM sip_trunks WHERE tenant_id = $1 AND id = $2", tenant_id, trunk_id)


async def using_secret(conn: asyncpg.Connection, tenant_id: str, name: str) -> list[str]:
    """Names of the tenant's trunks whose credentials name secret ``name``."""
    rows = await conn.fetch(
        """SELECT name FROM sip_trunks WHERE tenant_id = $1
        AND (config->>'inbound_password_secret' = $2 OR config->>'outbound_password_secret' = $2) ORDER BY name""",
        tenant_id, name,
    )
    return [r["name"] for r in rows]


def as_trunk(row: SipTrunkOut) -> SipTrunk:
    """What KV ``trunks`` holds for the trunk (what ingress reads)."""
    return SipTrunk.model_validate(row.model_dump())


async def all_trunks(conn: asyncpg.Connection) -> list[SipTrunk]:
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM sip_trunks ORDER BY id")
    return [as_trunk(_out(r)) for r in rows]


async def outbound_allow_list(conn: asyncpg.Connection, tenant_id: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT pattern FROM outbound_allow_list WHERE tenant_id = $1 ORDER BY position, pattern", tenant_id
    )
    return [r["pattern"] for r in rows]


async def replace_outbound_allow_list(conn: asyncpg.Connection, tenant_id: str, patterns: list[str]) -> None:
    await conn.execute("DELETE FROM outbound_allow_list WHERE tenant_id = $1", tenant_id)
    await conn.executemany(
        "INSERT INTO outbound_allow_list (tenant_id, pattern, position) VALUES ($1, $2, $3)",
        [(tenant_id, p, i) for i, p in enumerate(patterns)],
    )
