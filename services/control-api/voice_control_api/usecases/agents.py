"""Agents and their immutable versions: every change is a new version, mirrored to KV after the commit.

Admins see every agent of their tenant; a supervisor sees and changes only the agents they own, and
another's agent is "not found", like another tenant's.

Every saved version is checked: its LLM endpoint must not be an internal address unless the operator allow-lists
it (EGRESS_ALLOW; the connect-time guard in the data plane is what enforces it, this gives the early error), the
secret holding its key must be one of the agent's own tenant, its tools pass ``agent_tools`` (the same egress
check on HTTP tools, their secrets, the transfer allow-list) and its ``knowledge_base_ids`` name bases of its own
tenant (``knowledge.check_references``). A PATCH that sets ``tools`` replaces the whole list.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from pydantic import ValidationError
from voice_schemas import subjects
from voice_schemas.agent import AgentConfig
from voice_schemas.streams import KV_AGENTS

from ..context import AppContext
from ..models import Agent, AgentCreate, AgentDeployment, AgentFields, AgentPatch, AgentReplace, AgentVersion
from ..principal import Principal
from ..security import new_id
from ..store import agents as store
from ..store import users as user_store
from . import agent_mcp, agent_tools, audit_log, dataplane, intents, knowledge, tenant_secrets
from .common import ExpectedVersion, Listing, Pagination, connection, fetch_page, found, transaction
from .errors import Conflict, Forbidden, InvalidField, InvalidFields

_FIELDS = set(AgentFields.model_fields)
# merged by a PATCH; every other field (tools and knowledge_base_ids too) is replaced
_NESTED = ("llm", "stt", "turn", "recording", "knowledge", "outbound")

Fields = dict[str, Any]  # an agent's fields (AgentFields), as JSON values
MakeFields = Callable[[asyncpg.Connection, Fields], Awaitable[Fields]]


def _fields_of(version: AgentFields) -> Fields:
    """What a version is made of, without the agent's id, owner, version number and times."""
    return version.model_dump(mode="json", include=_FIELDS)


def _validated(fields: Fields) -> Fields:
    try:
        return AgentFields.model_validate(fields).model_dump(mode="json")
    except ValidationError as e:
        raise InvalidFields(e) from None


def _changed(before: Fields, after: Fields) -> list[str]:
    return sorted(k for k in after if before.get(k) != after[k])


def _merge(before: Fields, patch: Fields) -> Fields:
    """``patch`` over ``before``; the nested objects (llm, stt, turn, recording) are merged, not replaced."""
    merged = dict(before)
    for key, value in patch.items():
        if key in _NESTED and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


async def _check(ctx: AppContext, conn: asyncpg.Connection, config: AgentConfig) -> None:
    """What only the server can refuse in a version about to be saved: its LLM endpoint and key, its tools."""
    if config.llm.base_url:
        await agent_tools.check_egress(ctx.egress, "llm.base_url", config.llm.base_url)
    if config.llm.api_key_secret:
        await tenant_secrets.check_reference(conn, config.tenant_id, "llm.api_key_secret", config.llm.api_key_secret)
    await agent_tools.check(ctx.egress, conn, config.tenant_id, config.tools)
    await agent_mcp.check(ctx.egress, conn, config.tenant_id, config.mcp_servers, config.tools)
    await knowledge.check_references(conn, config.tenant_id, config.knowledge_base_ids)
    intents.check(config)  # unique names, tools that run without arguments


async def _owner(
    conn: asyncpg.Connection, principal: Principal, requested: str | None, current: str | None
) -> str | None:
    """Who owns the agent after this write. Supervisors own what they create and cannot hand agents over."""
    if not principal.is_admin:
        if requested is not None and requested != principal.user_id:
            raise Forbidden("a supervisor cannot assign agents to someone else")
        return current if current is not None else principal.user_id
    if requested is None or requested == current:
        return current
    if await user_store.get(conn, principal.tenant_id, requested) is None:
        raise InvalidField("owner_user_id", "no such user in this tenant")
    return requested


async def _visible(conn: asyncpg.Connection, principal: Principal, agent_id: str, *, lock: bool = False) -> Agent:
    agent = await store.get(conn, principal.tenant_id, agent_id, owner=principal.owner_filter, for_update=lock)
    return found(agent, "agent")


async def _new_version(
    ctx: AppContext,
    principal: Principal,
    agent_id: str,
    expected: ExpectedVersion,
    make_fields: MakeFields,
    requested_owner: str | None,
    action: str,
    **details: Any,
) -> Agent:
    async with transaction(ctx) as conn:
        agent = await _visible(conn, principal, agent_id, lock=True)
        expected.check(agent.version)
        before = _fields_of(agent)
        fields = _validated(await make_fields(conn, before))
        config = AgentConfig(id=agent.id, tenant_id=agent.tenant_id, version=agent.version + 1, **fields)
        await _check(ctx, conn, config)
        owner = await _owner(conn, principal, requested_owner, agent.owner_user_id)
        updated = await store.add_version(conn, config=config, owner_user_id=owner, created_by=principal.actor)
        changed = _changed(before, fields) + (["owner_user_id"] if owner != agent.owner_user_id else [])
        await audit_log.record(
            conn, principal, action, "agent", agent_id, fields=changed, version=updated.version, **details
        )
    await dataplane.publish_agent(ctx, updated)
    return updated


async def create_agent(ctx: AppContext, principal: Principal, body: AgentCreate) -> Agent:
    fields = _validated(body.model_dump(exclude={"owner_user_id"}))
    agent_id = new_id()
    config = AgentConfig(id=agent_id, tenant_id=principal.tenant_id, version=1, **fields)
    async with transaction(ctx) as conn:
        await _check(ctx, conn, config)
        owner = await _owner(conn, principal, body.owner_user_id, None)
        agent = await store.create(conn, config=config, owner_user_id=owner, created_by=principal.actor)
        await audit_log.record(conn, principal, "agent.create", "agent", agent_id, version=1)
    await dataplane.publish_agent(ctx, agent)
    return agent


async def list_agents(
    ctx: AppContext,
    principal: Principal,
    paging: Pagination,
    *,
    is_active: bool | None,
    name: str | None,
    owner_user_id: str | None,
) -> Listing[Agent]:
    return await fetch_page(
        ctx,
        paging,
        store.list_,
        principal.tenant_id,
        owner=principal.owner_filter,
        is_active=is_active,
        name=name,
        owner_user_id=owner_user_id,
    )


async def get_agent(ctx: AppContext, principal: Principal, agent_id: str) -> Agent:
    async with connection(ctx) as conn:
        return await _visible(conn, principal, agent_id)


async def replace_agent(
    ctx: AppContext, principal: Principal, agent_id: str, body: AgentReplace, expected: ExpectedVersion
) -> Agent:
    """A new version made of ``body`` alone: fields it leaves out take their defaults."""
    new_fields = body.model_dump(exclude={"owner_user_id", "version"})

    async def make(_: asyncpg.Connection, __: Fields) -> Fields:
        return new_fields

    return await _new_version(ctx, principal, agent_id, expected, make, body.owner_user_id, "agent.update")


async def patch_agent(
    ctx: AppContext, principal: Principal, agent_id: str, body: AgentPatch, expected: ExpectedVersion
) -> Agent:
    """A new version: the current one with the fields ``body`` sets (nested objects merged)."""
    patch = body.model_dump(exclude_unset=True, exclude={"owner_user_id", "version"})

    async def make(_: asyncpg.Connection, before: Fields) -> Fields:
        return _merge(before, patch)

    requested_owner = body.owner_user_id if "owner_user_id" in body.model_fields_set else None
    return await _new_version(ctx, principal, agent_id, expected, make, requested_owner, "agent.update")


async def restore_version(
    ctx: AppContext, principal: Principal, agent_id: str, version: int, expected: ExpectedVersion
) -> Agent:
    """A new version made of an old one's fields."""

    async def make(conn: asyncpg.Connection, _: Fields) -> Fields:
        return _fields_of(found(await store.get_version(conn, agent_id, version), "agent version"))

    return await _new_version(ctx, principal, agent_id, expected, make, None, "agent.restore", restored_from=version)


async def delete_agent(ctx: AppContext, principal: Principal, agent_id: str, expected: ExpectedVersion) -> None:
    """Refused while numbers route to it. Its versions stay (calls pinned to them); its current key goes."""
    async with transaction(ctx) as conn:
        agent = await _visible(conn, principal, agent_id, lock=True)
        expected.check(agent.version)
        if await store.numbers_routed_to(conn, agent_id):
            raise Conflict("phone numbers still route to this agent; reassign or delete them first")
        await store.soft_delete(conn, principal.tenant_id, agent_id)
        await audit_log.record(conn, principal, "agent.delete", "agent", agent_id, version=agent.version)
    await dataplane.retract_agent(ctx, agent_id)


async def list_versions(
    ctx: AppContext, principal: Principal, agent_id: str, paging: Pagination
) -> Listing[AgentVersion]:
    async with connection(ctx) as conn:
        await _visible(conn, principal, agent_id)
        rows = await store.list_versions(conn, agent_id, limit=paging.fetch, offset=paging.offset)
    return paging.page(rows)


async def get_version(ctx: AppContext, principal: Principal, agent_id: str, version: int) -> AgentVersion:
    async with connection(ctx) as conn:
        await _visible(conn, principal, agent_id)
        return found(await store.get_version(conn, agent_id, version), "agent version")


async def deployment(ctx: AppContext, principal: Principal, agent_id: str) -> AgentDeployment:
    """What the data plane reads for the agent (its current key in KV), next to the current version."""
    agent = await get_agent(ctx, principal, agent_id)
    held = await ctx.publisher.read_agent(agent_id)
    config, revision = held if held is not None else (None, None)
    kv_version = config.get("version") if config else None
    return AgentDeployment(
        agent_id=agent_id,
        version=agent.version,
        kv_bucket=KV_AGENTS.bucket,
        kv_key=subjects.agent_key(agent_id),
        kv_version=kv_version if isinstance(kv_version, int) else None,
        kv_revision=revision,
        in_sync=kv_version == agent.version,
        config=config,
    )
