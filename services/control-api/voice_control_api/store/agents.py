"""Agents: a head row (current version, owner) plus immutable versions holding the configuration."""

from __future__ import annotations

import json
from typing import TypeVar

import asyncpg
from pydantic import BaseModel
from voice_schemas.agent import AgentConfig

from ..models import Agent, AgentVersion

M = TypeVar("M", bound=BaseModel)

_HEAD = """
    SELECT a.id, a.tenant_id, a.current_version AS version, a.owner_user_id, a.created_at, a.updated_at, v.config
    FROM agents a JOIN agent_versions v ON v.agent_id = a.id AND v.version = a.current_version
"""
_VERSION = "SELECT agent_id, version, created_at, created_by, config FROM agent_versions"
_NOT_STORED = {"id", "tenant_id", "version"}  # columns of their own, not part of the stored config


def _with_config(model: type[M], row: asyncpg.Record) -> M:
    """A row whose columns are fields of ``model``, with ``config`` (the stored version) spread among them."""
    columns = dict(row)
    return model.model_validate({**json.loads(columns.pop("config")), **columns})


async def _insert_version(conn: asyncpg.Connection, config: AgentConfig, created_by: str) -> None:
    await conn.execute(
        "INSERT INTO agent_versions (agent_id, version, tenant_id, config, created_by)"
        " VALUES ($1, $2, $3, $4::jsonb, $5)",
        config.id,
        config.version,
        config.tenant_id,
        config.model_dump_json(exclude=_NOT_STORED),
        created_by,
    )


async def create(conn: asyncpg.Connection, *, config: AgentConfig, owner_user_id: str | None, created_by: str) -> Agent:
    """A new agent whose first version is ``config``."""
    await conn.execute(
        """
        INSERT INTO agents (id, tenant_id, owner_user_id, current_version, name, is_active)
        VALUES ($1, $2, $3, $4, $5, $6)
        """,
        config.id,
        config.tenant_id,
        owner_user_id,
        config.version,
        config.name,
        config.is_active,
    )
    await _insert_version(conn, config, created_by)
    agent = await get(conn, config.tenant_id, config.id)
    assert agent is not None
    return agent


async def ever_existed(conn: asyncpg.Connection, agent_id: str) -> bool:
    """Whether an agent with this id exists or existed (deleted ones included), in any tenant."""
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM agents WHERE id = $1)", agent_id))


async def get(
    conn: asyncpg.Connection, tenant_id: str, agent_id: str, *, owner: str | None = None, for_update: bool = False
) -> Agent | None:
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
    return _with_config(Agent, row) if row else None


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
) -> list[Agent]:
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
    return [_with_config(Agent, r) for r in rows]


async def add_version(
    conn: asyncpg.Connection, *, config: AgentConfig, owner_user_id: str | None, created_by: str
) -> Agent:
    """Append ``config`` (the current version + 1) and make it current. The caller holds the head row lock."""
    await _insert_version(conn, config, created_by)
    await conn.execute(
        """
        UPDATE agents SET current_version = $2, name = $3, is_active = $4, owner_user_id = $5, updated_at = now()
        WHERE id = $1
        """,
        config.id,
        config.version,
        config.name,
        config.is_active,
        owner_user_id,
    )
    updated = await get(conn, config.tenant_id, config.id)
    assert updated is not None
    return updated


async def lock_live(conn: asyncpg.Connection, tenant_id: str, agent_id: str) -> bool:
    """Whether the agent is live in this tenant; FOR SHARE keeps it from being deleted until the commit."""
    found = await conn.fetchval(
        "SELECT 1 FROM agents WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL FOR SHARE", tenant_id, agent_id
    )
    return bool(found)


async def soft_delete(conn: asyncpg.Connection, tenant_id: str, agent_id: str) -> None:
    await conn.execute(
        "UPDATE agents SET deleted_at = now(), updated_at = now() WHERE tenant_id = $1 AND id = $2", tenant_id, agent_id
    )


async def numbers_routed_to(conn: asyncpg.Connection, agent_id: str) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM phone_numbers WHERE agent_id = $1", agent_id))


async def using_secret(conn: asyncpg.Connection, tenant_id: str, name: str) -> list[str]:
    """Live agents of the tenant whose current version names the secret: as its LLM key, or as a
    ``{{secret:NAME}}`` in a tool's URL or header value or an MCP server's header value."""
    rows = await conn.fetch(
        f"""{_HEAD}
        WHERE a.tenant_id = $1 AND a.deleted_at IS NULL AND (
          v.config -> 'llm' ->> 'api_key_secret' = $2
          OR EXISTS (
            SELECT 1 FROM jsonb_array_elements(
              CASE jsonb_typeof(v.config -> 'tools') WHEN 'array' THEN v.config -> 'tools' ELSE '[]' END) t
            WHERE jsonb_typeof(t) = 'object'
              AND (strpos(t ->> 'url', '{{{{secret:' || $2 || '}}}}') > 0
                   OR strpos(t ->> 'headers', '{{{{secret:' || $2 || '}}}}') > 0))
          OR EXISTS (
            SELECT 1 FROM jsonb_array_elements(
              CASE jsonb_typeof(v.config -> 'mcp_servers') WHEN 'array' THEN v.config -> 'mcp_servers' ELSE '[]' END) m
            WHERE jsonb_typeof(m) = 'object' AND strpos(m ->> 'headers', '{{{{secret:' || $2 || '}}}}') > 0))
        ORDER BY a.id
        """,
        tenant_id,
        name,
    )
    return [r["id"] for r in rows]


async def list_versions(conn: asyncpg.Connection, agent_id: str, *, limit: int, offset: int) -> list[AgentVersion]:
    rows = await conn.fetch(
        f"{_VERSION} WHERE agent_id = $1 ORDER BY version DESC LIMIT $2 OFFSET $3",
        agent_id,
        limit,
        offset,
    )
    return [_with_config(AgentVersion, r) for r in rows]


async def get_version(conn: asyncpg.Connection, agent_id: str, version: int) -> AgentVersion | None:
    row = await conn.fetchrow(
        f"{_VERSION} WHERE agent_id = $1 AND version = $2",
        agent_id,
        version,
    )
    return _with_config(AgentVersion, row) if row else None


# ------------------------------------------------------------------ for the KV resync
async def live_configs(conn: asyncpg.Connection) -> list[AgentConfig]:
    rows = await conn.fetch(f"{_HEAD} WHERE a.deleted_at IS NULL ORDER BY a.id")
    return [_with_config(AgentConfig, r) for r in rows]


async def all_versions(conn: asyncpg.Connection) -> set[tuple[str, int]]:
    rows = await conn.fetch("SELECT agent_id, version FROM agent_versions")
    return {(r["agent_id"], r["version"]) for r in rows}
