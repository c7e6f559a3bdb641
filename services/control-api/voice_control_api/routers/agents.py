"""Agents, their immutable versions, and what the data plane sees of them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from fastapi import APIRouter, Path, Response
from pydantic import ValidationError
from voice_runtime.logging import get_logger
from voice_schemas import subjects
from voice_schemas.streams import KV_AGENTS

from .. import audit
from ..auth import Principal
from ..context import AppContext
from ..deps import AUTHED, Auth, Ctx, Paging, QueryText, errors
from ..models import (
    Agent,
    AgentCreate,
    AgentDeployment,
    AgentFields,
    AgentPatch,
    AgentReplace,
    AgentVersion,
    Page,
)
from ..problems import conflict, forbidden, invalid, not_found, validation_error
from ..rest import IdPath, IfMatch, check_precondition, page, set_etag
from ..security import new_id
from ..store import agents as store
from ..store import users as user_store

log = get_logger(__name__)
router = APIRouter(prefix="/v1/agents", tags=["agents"], responses=AUTHED)

_FIELDS = tuple(AgentFields.model_fields)
_NESTED = ("llm", "stt", "turn")


async def push(ctx: AppContext, agent: dict[str, Any]) -> None:
    """Publish the agent's current version to KV (after the commit). A failure is repaired by a resync."""
    try:
        await ctx.publisher.publish_agent(store.to_config(agent))
    except Exception as e:
        log.warning("kv_publish_failed", agent_id=agent["id"], error=repr(e)[:300])
        ctx.request_resync()


async def _retract(ctx: AppContext, agent_id: str) -> None:
    try:
        await ctx.publisher.retract_agent(agent_id)
    except Exception as e:
        log.warning("kv_retract_failed", agent_id=agent_id, error=repr(e)[:300])
        ctx.request_resync()


async def _owner(
    conn: asyncpg.Connection, principal: Principal, requested: str | None, current: str | None
) -> str | None:
    """Who owns the agent after this write. Supervisors own what they create and cannot hand agents over."""
    if not principal.is_admin:
        if requested is not None and requested != principal.user_id:
            raise forbidden("a supervisor cannot assign agents to someone else")
        return current if current is not None else principal.user_id
    if requested is None or requested == current:
        return current
    if await user_store.get(conn, principal.tenant_id, requested) is None:
        raise invalid("body.owner_user_id", "no such user in this tenant")
    return requested


def _fields_of(agent: dict[str, Any]) -> dict[str, Any]:
    return {k: agent[k] for k in _FIELDS if k in agent}


def _validated(fields: dict[str, Any]) -> dict[str, Any]:
    try:
        return AgentFields.model_validate(fields).model_dump(mode="json")
    except ValidationError as e:
        raise validation_error(e) from None


def _changed(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return sorted(k for k in after if before.get(k) != after[k])


async def _load_for_update(conn: asyncpg.Connection, principal: Principal, agent_id: str) -> dict[str, Any]:
    agent = await store.get(conn, principal.tenant_id, agent_id, owner=principal.owner_filter, for_update=True)
    if agent is None:
        raise not_found("agent")
    return agent


async def _new_version(
    ctx: AppContext,
    principal: Principal,
    agent_id: str,
    if_match: str | None,
    body_version: int | None,
    make_fields: Callable[[asyncpg.Connection, dict[str, Any]], Awaitable[dict[str, Any]]],
    requested_owner: str | None,
    action: str,
    **details: Any,
) -> dict[str, Any]:
    async with ctx.pool.acquire() as conn, conn.transaction():
        agent = await _load_for_update(conn, principal, agent_id)
        check_precondition(agent["version"], if_match, body_version)
        before = _fields_of(agent)
        fields = _validated(await make_fields(conn, before))
        owner = await _owner(conn, principal, requested_owner, agent["owner_user_id"])
        updated = await store.add_version(
            conn, agent=agent, fields=fields, owner_user_id=owner, created_by=principal.actor
        )
        changed = _changed(before, fields) + (["owner_user_id"] if owner != agent["owner_user_id"] else [])
        await audit.record(
            conn, principal, action, "agent", agent_id, fields=changed, version=updated["version"], **details
        )
    await push(ctx, updated)
    return updated


@router.post(
    "",
    status_code=201,
    response_model=Agent,
    summary="Create an agent (version 1)",
    description="The new agent's config is written to JetStream KV (`agents` bucket, `a.<id>` and `a.<id>.v1`).",
)
async def create_agent(body: AgentCreate, principal: Auth, ctx: Ctx, response: Response) -> dict[str, Any]:
    fields = _validated(body.model_dump(exclude={"owner_user_id"}))
    agent_id = new_id()
    async with ctx.pool.acquire() as conn, conn.transaction():
        owner = await _owner(conn, principal, body.owner_user_id, None)
        agent = await store.create(
            conn,
            agent_id=agent_id,
            tenant_id=principal.tenant_id,
            owner_user_id=owner,
            fields=fields,
            created_by=principal.actor,
        )
        await audit.record(conn, principal, "agent.create", "agent", agent_id, version=1)
    await push(ctx, agent)
    response.headers["Location"] = f"/v1/agents/{agent_id}"
    set_etag(response, agent["version"])
    return agent


@router.get(
    "",
    response_model=Page[Agent],
    summary="List agents",
    description="Admins see every agent of the tenant; supervisors see the agents they own.",
)
async def list_agents(
    principal: Auth,
    ctx: Ctx,
    paging: Paging,
    is_active: bool | None = None,
    name: QueryText = None,
    owner_user_id: QueryText = None,
) -> dict[str, Any]:
    async with ctx.pool.acquire() as conn:
        rows = await store.list_(
            conn,
            principal.tenant_id,
            owner=principal.owner_filter,
            is_active=is_active,
            name=name,
            owner_user_id=owner_user_id,
            limit=paging.limit + 1,
            offset=paging.offset,
        )
    return page(rows, paging)


@router.get(
    "/{agent_id}",
    response_model=Agent,
    responses=errors(404),
    summary="Get an agent (current version)",
    description="The `ETag` header carries the version, for `If-Match` on updates.",
)
async def get_agent(agent_id: IdPath, principal: Auth, ctx: Ctx, response: Response) -> dict[str, Any]:
    async with ctx.pool.acquire() as conn:
        agent = await store.get(conn, principal.tenant_id, agent_id, owner=principal.owner_filter)
    if agent is None:
        raise not_found("agent")
    set_etag(response, agent["version"])
    return agent


@router.put(
    "/{agent_id}",
    response_model=Agent,
    responses=errors(404, 409, 412),
    summary="Replace an agent's configuration (new version)",
    description="Fields left out take their defaults. Send `If-Match` (or `version`) to refuse a stale write.",
)
async def replace_agent(
    agent_id: IdPath,
    body: AgentReplace,
    principal: Auth,
    ctx: Ctx,
    response: Response,
    if_match: IfMatch = None,
) -> dict[str, Any]:
    new_fields = body.model_dump(exclude={"owner_user_id", "version"})

    async def make(_: asyncpg.Connection, __: dict[str, Any]) -> dict[str, Any]:
        return new_fields

    agent = await _new_version(
        ctx, principal, agent_id, if_match, body.version, make, body.owner_user_id, "agent.update"
    )
    set_etag(response, agent["version"])
    return agent


@router.patch(
    "/{agent_id}",
    response_model=Agent,
    responses=errors(404, 409, 412),
    summary="Change some fields of an agent (new version)",
    description="Nested objects (`llm`, `stt`, `turn`) are merged. Send `If-Match` (or `version`) to refuse a "
    "stale write.",
)
async def patch_agent(
    agent_id: IdPath,
    body: AgentPatch,
    principal: Auth,
    ctx: Ctx,
    response: Response,
    if_match: IfMatch = None,
) -> dict[str, Any]:
    patch = body.model_dump(exclude_unset=True, exclude={"owner_user_id", "version"})

    async def make(_: asyncpg.Connection, before: dict[str, Any]) -> dict[str, Any]:
        merged = dict(before)
        for key, value in patch.items():
            if key in _NESTED and isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        return merged

    requested_owner = body.owner_user_id if "owner_user_id" in body.model_fields_set else None
    agent = await _new_version(ctx, principal, agent_id, if_match, body.version, make, requested_owner, "agent.update")
    set_etag(response, agent["version"])
    return agent


@router.delete(
    "/{agent_id}",
    status_code=204,
    responses=errors(404, 409, 412),
    summary="Delete an agent",
    description="Refused (409) while phone numbers route to it. Its versions are kept for the calls that ran "
    "them; its current key is removed from KV.",
)
async def delete_agent(agent_id: IdPath, principal: Auth, ctx: Ctx, if_match: IfMatch = None) -> Response:
    async with ctx.pool.acquire() as conn, conn.transaction():
        agent = await _load_for_update(conn, principal, agent_id)
        check_precondition(agent["version"], if_match, None)
        if await store.numbers_routed_to(conn, agent_id):
            raise conflict("phone numbers still route to this agent; reassign or delete them first")
        await store.soft_delete(conn, principal.tenant_id, agent_id)
        await audit.record(conn, principal, "agent.delete", "agent", agent_id, version=agent["version"])
    await _retract(ctx, agent_id)
    return Response(status_code=204)


async def _visible_agent(ctx: AppContext, principal: Principal, agent_id: str) -> dict[str, Any]:
    async with ctx.pool.acquire() as conn:
        agent = await store.get(conn, principal.tenant_id, agent_id, owner=principal.owner_filter)
    if agent is None:
        raise not_found("agent")
    return agent


@router.get(
    "/{agent_id}/versions",
    response_model=Page[AgentVersion],
    responses=errors(404),
    summary="List an agent's versions (newest first)",
)
async def list_versions(agent_id: IdPath, principal: Auth, ctx: Ctx, paging: Paging) -> dict[str, Any]:
    await _visible_agent(ctx, principal, agent_id)
    async with ctx.pool.acquire() as conn:
        rows = await store.list_versions(conn, agent_id, limit=paging.limit + 1, offset=paging.offset)
    return page(rows, paging)


VersionPath = Path(ge=1, le=2_000_000_000, description="Version number")


@router.get(
    "/{agent_id}/versions/{version}",
    response_model=AgentVersion,
    responses=errors(404),
    summary="Get one version of an agent",
)
async def get_version(agent_id: IdPath, principal: Auth, ctx: Ctx, version: int = VersionPath) -> dict[str, Any]:
    await _visible_agent(ctx, principal, agent_id)
    async with ctx.pool.acquire() as conn:
        row = await store.get_version(conn, agent_id, version)
    if row is None:
        raise not_found("agent version")
    return row


@router.post(
    "/{agent_id}/versions/{version}/restore",
    response_model=Agent,
    responses=errors(404, 409, 412),
    summary="Make an old version current again (as a new version)",
)
async def restore_version(
    agent_id: IdPath,
    principal: Auth,
    ctx: Ctx,
    response: Response,
    version: int = VersionPath,
    if_match: IfMatch = None,
) -> dict[str, Any]:
    async def make(conn: asyncpg.Connection, _: dict[str, Any]) -> dict[str, Any]:
        old = await store.get_version(conn, agent_id, version)
        if old is None:
            raise not_found("agent version")
        return {k: old[k] for k in _FIELDS if k in old}

    agent = await _new_version(
        ctx, principal, agent_id, if_match, None, make, None, "agent.restore", restored_from=version
    )
    set_etag(response, agent["version"])
    return agent


@router.get(
    "/{agent_id}/deployment",
    response_model=AgentDeployment,
    responses=errors(404),
    summary="What the data plane reads for this agent (JetStream KV)",
    description="Reads `a.<id>` from the `agents` KV bucket and compares it with the current version.",
)
async def get_deployment(agent_id: IdPath, principal: Auth, ctx: Ctx) -> AgentDeployment:
    agent = await _visible_agent(ctx, principal, agent_id)
    held = await ctx.publisher.read_agent(agent_id)
    config, revision = held if held is not None else (None, None)
    kv_version = config.get("version") if config else None
    return AgentDeployment(
        agent_id=agent_id,
        version=agent["version"],
        kv_bucket=KV_AGENTS.bucket,
        kv_key=subjects.agent_key(agent_id),
        kv_version=kv_version if isinstance(kv_version, int) else None,
        kv_revision=revision,
        in_sync=kv_version == agent["version"],
        config=config,
    )
