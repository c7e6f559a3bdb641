"""Agents: a head row (current version, owner) plus immutable versions holding the configuration."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
from voice_schemas.agent import AgentConfig

_HEAD = """
    SELECT a.id, a.tenant_id, a.owner_user_id, a.current_version, a.created_at, a.updated_at, v.config
    FROM agents a JOIN agent_versions v ON v.agent_id = a.id AND v.version = a.current_version
"""


def _agent(row: asyncpg.Record) -> dict[str, Any]:
    return {
        **json.loads(row["config"]),
        "id": row["id"],
        "tenant_id": row["tenant_id"],
        "version": row["current_version"],
        "owner_user_id": row["owner_user_id"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def to_config(agent: dict[str, Any]) -> AgentConfig:
    """The data plane's view of an agent (what goes to KV)."""
    return AgentConfig.model_validate(agent)


async def create(
    conn: asyncpg.Connection,
    *,
    agent_id: str,
    tenant_id: str,
    owner_user_id: str | None,
    fields: dict[str, Any],
    created_by: str,
) -> dict[str, Any]:
    await conn.execute(
        """
        INSERT INTO agents (id, tenant_id, owner_user_id, current_version, name, is_active)
        VALUES ($1, $2, $3, 1, $4, $5)
        """,
        agent_id,
        tenant_id,
        owner_user_id,
        fields["name"],
        fields["is_active"],
    )
    await conn.execute(
        "INSERT INTO agent_versions (agent_id, version, tenant_id, config, created_by)"
        " VALUES ($1, 1, $2, $3::jsonb, $4)",
        agent_id,
        tenant_id,
        json.dumps(fields),
        created_by,
    )
    agent = await get(conn, tenant_id, agent_id)
    assert agent is not None
    return agent


async def get(
    conn: asyncpg.Connection, tenant_id: str, agent_id: str, *, owner: str | None = None, for_update: bool = False
) -> dict[str, Any] | None:
    if for_update:
        # lock the head row alone first: a locked join would be re-checked against the row a concurrent
        # writer just committed (with the old version row) and vanish instead of waiting its turn
        locked = await conn.fetchval(
            """
            SELECT id FROM agents WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL
              AND ($3::text IS NULL OR owner_user_id = $3) FOR UPDATE
            """,
            tenant_id,
            agent_id,
            owner,
        )
        if locked is None:
            return None
    row = await conn.fetchrow(
        f"""{_HEAD}
        WHERE a.tenant_id = $1 AND a.id = $2 AND a.deleted_at IS NULL
          AND ($3::text IS NULL OR a.owner_user_id = $3)
        """,
        tenant_id,
        agent_id,
        owner,
    )
    return _agent(row) if row else None


async def exists(conn: asyncpg.Connection, tenant_id: str, agent_id: str, *, owner: str | None = None) -> bool:
    return bool(
        await conn.fetchval(
            """
            SELECT EXISTS (SELECT 1 FROM agents WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL
                           AND ($3::text IS NULL OR owner_user_id = $3))
            """,
            tenant_id,
            agent_id,
            owner,
        )
    )


async def list_(
    conn: asyncpg.Connection,
    tenant_id: str,
    *,
    owner: str | None,
    is_active: bool | None,
    name: str | None,
    owner_user_id: str | None,
    limit: int,
    offset: int,
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"""{_HEAD}
        WHERE a.tenant_id = $1 AND a.deleted_at IS NULL AND ($2::text IS NULL OR a.owner_user_id = $2)
          AND ($3::bool IS NULL OR a.is_active = $3)
          AND ($4::text IS NULL OR strpos(lower(a.name), lower($4)) > 0)
          AND ($5::text IS NULL OR a.owner_user_id = $5)
        ORDER BY a.created_at, a.id LIMIT $6 OFFSET $7
        """,
        tenant_id,
        owner,
        is_active,
        name,
        owner_user_id,
        limit,
        offset,
    )
    return [_agent(r) for r in rows]


async def add_version(
    conn: asyncpg.Connection,
    *,
    agent: dict[str, Any],
    fields: dict[str, Any],
    owner_user_id: str | None,
    created_by: str,
) -> dict[str, Any]:
    """Append version ``agent.version + 1`` and make it current. The caller holds the head row lock."""
    version = int(agent["version"]) + 1
    await conn.execute(
        "INSERT INTO agent_versions (agent_id, version, tenant_id, config, created_by)"
        " VALUES ($1, $2, $3, $4::jsonb, $5)",
        agent["id"],
        version,
        agent["tenant_id"],
        json.dumps(fields),
        created_by,
    )
    await conn.execute(
        """
        UPDATE agents SET current_version = $2, name = $3, is_active = $4, owner_user_id = $5, updated_at = now()
        WHERE id = $1
        """,
        agent["id"],
        version,
        fields["name"],
        fields["is_active"],
        owner_user_id,
    )
    updated = await get(conn, agent["tenant_id"], agent["id"])
    assert updated is not None
    return updated


async def soft_delete(conn: asyncpg.Connection, tenant_id: str, agent_id: str) -> None:
    await conn.execute(
        "UPDATE agents SET deleted_at = now(), updated_at = now() WHERE tenant_id = $1 AND id = $2", tenant_id, agent_id
    )


async def numbers_routed_to(conn: asyncpg.Connection, agent_id: str) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM phone_numbers WHERE agent_id = $1", agent_id))


def _version(row: asyncpg.Record) -> dict[str, Any]:
    return {
        **json.loads(row["config"]),
        "agent_id": row["agent_id"],
        "version": row["version"],
        "created_at": row["created_at"],
        "created_by": row["created_by"],
    }


async def list_versions(conn: asyncpg.Connection, agent_id: str, *, limit: int, offset: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """
        SELECT agent_id, version, config, created_at, created_by FROM agent_versions
        WHERE agent_id = $1 ORDER BY version DESC LIMIT $2 OFFSET $3
        """,
        agent_id,
        limit,
        offset,
    )
    return [_version(r) for r in rows]


async def get_version(conn: asyncpg.Connection, agent_id: str, version: int) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        "SELECT agent_id, version, config, created_at, created_by FROM agent_versions"
        " WHERE agent_id = $1 AND version = $2",
        agent_id,
        version,
    )
    return _version(row) if row else None


# ------------------------------------------------------------------ for the KV resync
async def live_configs(conn: asyncpg.Connection) -> list[AgentConfig]:
    rows = await conn.fetch(f"{_HEAD} WHERE a.deleted_at IS NULL ORDER BY a.id")
    return [to_config(_agent(r)) for r in rows]


async def all_versions(conn: asyncpg.Connection) -> set[tuple[str, int]]:
    rows = await conn.fetch("SELECT agent_id, version FROM agent_versions")
    return {(r["agent_id"], r["version"]) for r in rows}
