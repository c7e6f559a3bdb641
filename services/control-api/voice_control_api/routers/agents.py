"""Agents, their immutable versions, and what the data plane sees of them."""

from __future__ import annotations

from fastapi import APIRouter, Path, Response

from ..deps import AUTHED, Auth, Ctx, Paging, QueryText, errors
from ..models import Agent, AgentCreate, AgentDeployment, AgentPatch, AgentReplace, AgentVersion, Page
from ..rest import IdPath, IfMatch, expected_version, set_etag
from ..usecases import agents
from ..usecases.common import Listing

router = APIRouter(prefix="/v1/agents", tags=["agents"], responses=AUTHED)

VersionPath = Path(ge=1, le=2_000_000_000, description="Version number")


def _current(response: Response, agent: Agent) -> Agent:
    set_etag(response, agent.version)
    return agent


@router.post(
    "",
    status_code=201,
    response_model=Agent,
    summary="Create an agent (version 1)",
    description="The new agent's config is written to JetStream KV (`agents` bucket, `a.<id>` and `a.<id>.v1`).",
)
async def create_agent(body: AgentCreate, principal: Auth, ctx: Ctx, response: Response) -> Agent:
    agent = await agents.create_agent(ctx, principal, body)
    response.headers["Location"] = f"/v1/agents/{agent.id}"
    return _current(response, agent)


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
) -> Listing[Agent]:
    return await agents.list_agents(ctx, principal, paging, is_active=is_active, name=name, owner_user_id=owner_user_id)


@router.get(
    "/{agent_id}",
    response_model=Agent,
    responses=errors(404),
    summary="Get an agent (current version)",
    description="The `ETag` header carries the version, for `If-Match` on updates.",
)
async def get_agent(agent_id: IdPath, principal: Auth, ctx: Ctx, response: Response) -> Agent:
    return _current(response, await agents.get_agent(ctx, principal, agent_id))


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
) -> Agent:
    agent = await agents.replace_agent(ctx, principal, agent_id, body, expected_version(if_match, body.version))
    return _current(response, agent)


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
) -> Agent:
    agent = await agents.patch_agent(ctx, principal, agent_id, body, expected_version(if_match, body.version))
    return _current(response, agent)


@router.delete(
    "/{agent_id}",
    status_code=204,
    responses=errors(404, 409, 412),
    summary="Delete an agent",
    description="Refused (409) while phone numbers route to it. Its versions are kept for the calls that ran "
    "them; its current key is removed from KV.",
)
async def delete_agent(agent_id: IdPath, principal: Auth, ctx: Ctx, if_match: IfMatch = None) -> Response:
    await agents.delete_agent(ctx, principal, agent_id, expected_version(if_match))
    return Response(status_code=204)


@router.get(
    "/{agent_id}/versions",
    response_model=Page[AgentVersion],
    responses=errors(404),
    summary="List an agent's versions (newest first)",
)
async def list_versions(agent_id: IdPath, principal: Auth, ctx: Ctx, paging: Paging) -> Listing[AgentVersion]:
    return await agents.list_versions(ctx, principal, agent_id, paging)


@router.get(
    "/{agent_id}/versions/{version}",
    response_model=AgentVersion,
    responses=errors(404),
    summary="Get one version of an agent",
)
async def get_version(agent_id: IdPath, principal: Auth, ctx: Ctx, version: int = VersionPath) -> AgentVersion:
    return await agents.get_version(ctx, principal, agent_id, version)


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
) -> Agent:
    agent = await agents.restore_version(ctx, principal, agent_id, version, expected_version(if_match))
    return _current(response, agent)


@router.get(
    "/{agent_id}/deployment",
    response_model=AgentDeployment,
    responses=errors(404),
    summary="What the data plane reads for this agent (JetStream KV)",
    description="Reads `a.<id>` from the `agents` KV bucket and compares it with the current version.",
)
async def get_deployment(agent_id: IdPath, principal: Auth, ctx: Ctx) -> AgentDeployment:
    return await agents.deployment(ctx, principal, agent_id)
