"""Agents in the console: list, create, edit (each save is a new version), version history and restore, and the
pages that talk to an agent by voice (WebRTC) and by text.

An agent's tools are edited as one JSON list (the API's ``tools`` field, which saving replaces whole), checked by the
same request models and use case as the API; their refusals are shown next to the field."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import ValidationError

from ..models import Agent, AgentCreate, AgentPatch, User
from ..rest import IdPath
from ..usecases import agents, phone_numbers, users
from ..usecases.agent_tools import Tool
from ..usecases.common import ExpectedVersion, Pagination
from ..usecases.errors import InvalidField, UseCaseError
from .web import ConsoleRoute, Ctx, Signed, Viewer, form_fields, page, problems_of, see_other, status_of

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

PAGE = 50
VersionPath = Path(ge=1, le=2_000_000_000)
# form field -> how it is read: text fields may be cleared (None) where the model allows it
_TEXT = ("name", "system_prompt", "language")
_CLEARABLE = ("first_message", "voice")
_NESTED_CLEARABLE = {"llm": ("model", "base_url", "api_key_secret"), "stt": ("model", "language")}
MAX_TOOLS_CHARS = 262_144
_NESTED_NUMBERS = {
    "llm": ("temperature", "max_tokens"),
    "turn": ("end_of_turn_ms", "min_barge_in_ms", "min_turn_silence_ms"),
}


def agent_fields(form: dict[str, str], *, owner_field: bool) -> dict[str, Any]:
    """The agent form as the API's JSON body (``llm.model`` -> ``{"llm": {"model": ...}}``). An empty optional field
    is null; an empty number keeps the default; an unticked box is false."""
    out: dict[str, Any] = {name: form.get(name, "") for name in _TEXT}
    for name in _CLEARABLE:
        out[name] = form.get(name, "").strip() or None
    nested: dict[str, dict[str, Any]] = {"llm": {}, "stt": {}, "turn": {}}
    for group, names in _NESTED_CLEARABLE.items():
        for name in names:
            nested[group][name] = form.get(f"{group}.{name}", "").strip() or None
    for group, names in _NESTED_NUMBERS.items():
        for name in names:
            value = form.get(f"{group}.{name}", "").strip()
            if value:
                nested[group][name] = value
    nested["turn"]["interruptible"] = "turn.interruptible" in form
    out.update(nested)
    out["is_active"] = "is_active" in form
    if owner_field and form.get("owner_user_id"):
        out["owner_user_id"] = form["owner_user_id"]
    return out


def tools_of(text: str) -> list[Any]:
    """The tools field: a JSON list of tools (empty: none). InvalidField says why it is not one."""
    if len(text) > MAX_TOOLS_CHARS:
        raise InvalidField("tools", f"must be at most {MAX_TOOLS_CHARS} characters")
    if not text.strip():
        return []
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidField("tools", f"not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    if not isinstance(value, list):
        raise InvalidField("tools", "must be a JSON list of tools: [ {...}, ... ]")
    return value


def tools_text(tools: Sequence[Tool]) -> str:
    """An agent's tools as the field shows them: each without the settings it leaves at their defaults."""
    if not tools:
        return ""
    shown = [{"type": t.type, **t.model_dump(mode="json", exclude_defaults=True)} for t in tools]
    return json.dumps(shown, indent=2, ensure_ascii=False)


def _with_tools(fields: dict[str, Any], form: dict[str, str]) -> dict[str, Any]:
    """``fields`` with the tools field parsed (a form without the field leaves the tools as they are)."""
    return {**fields, "tools": tools_of(form["tools"])} if "tools" in form else fields


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


async def _supervisors(ctx: Ctx, viewer: Viewer) -> list[User]:
    """Who an admin may hand an agent to (the owner select); supervisors see no such select."""
    if not viewer.is_admin:
        return []
    listing = await users.list_users(
        ctx, viewer.principal, Pagination(limit=200, offset=0), role="supervisor", is_active=True, email=None
    )
    return listing.items


async def _form_page(
    request: Request,
    ctx: Ctx,
    viewer: Viewer,
    *,
    agent: Agent | None,
    values: dict[str, Any],
    errors: list[str] | None = None,
    status: int = 200,
) -> Response:
    errors = errors or []
    return page(
        request,
        "agents/form.html",
        viewer,
        status=status,
        agent=agent,
        v=values,
        supervisors=await _supervisors(ctx, viewer),
        errors=errors,
        tool_errors=[e for e in errors if e.startswith("tools")],
    )


def _values_of(agent: Agent | None) -> dict[str, Any]:
    """What the form shows: an agent's current fields, or the defaults of a new one."""
    if agent is not None:
        return {**agent.model_dump(mode="json"), "tools_json": tools_text(agent.tools)}
    return {**AgentCreate().model_dump(mode="json"), "tools_json": ""}


@router.get("/agents")
async def list_agents(
    request: Request,
    ctx: Ctx,
    viewer: Signed,
    name: str | None = Query(None, max_length=200),
    offset: int = Query(0, ge=0, le=1_000_000),
) -> Response:
    listing = await agents.list_agents(
        ctx,
        viewer.principal,
        Pagination(limit=PAGE, offset=offset),
        is_active=None,
        name=name or None,
        owner_user_id=None,
    )
    return page(request, "agents/list.html", viewer, listing=listing, name=name or "")


@router.get("/agents/new")
async def new_agent(request: Request, ctx: Ctx, viewer: Signed) -> Response:
    return await _form_page(request, ctx, viewer, agent=None, values=_values_of(None))


@router.post("/agents/new")
async def create_agent(request: Request, ctx: Ctx, viewer: Signed) -> Response:
    form = await form_fields(request)
    fields = agent_fields(form, owner_field=viewer.is_admin)
    try:
        body = AgentCreate.model_validate(_with_tools(fields, form))
        agent = await agents.create_agent(ctx, viewer.principal, body)
    except (ValidationError, UseCaseError) as e:
        values = {**fields, "tools_json": form.get("tools", "")}
        return await _form_page(
            request, ctx, viewer, agent=None, values=values, errors=problems_of(e), status=status_of(e)
        )
    return see_other(f"/agents/{agent.id}", "agent-created")


@router.get("/agents/{agent_id}")
async def show_agent(
    agent_id: IdPath, request: Request, ctx: Ctx, viewer: Signed, offset: int = Query(0, ge=0, le=1_000_000)
) -> Response:
    agent = await agents.get_agent(ctx, viewer.principal, agent_id)
    versions = await agents.list_versions(ctx, viewer.principal, agent_id, Pagination(limit=PAGE, offset=offset))
    numbers = await phone_numbers.list_numbers(
        ctx, viewer.principal, Pagination(limit=200, offset=0), agent_id=agent_id, number=None
    )
    deployment = await agents.deployment(ctx, viewer.principal, agent_id)
    return page(
        request,
        "agents/detail.html",
        viewer,
        agent=agent,
        versions=versions,
        numbers=numbers.items,
        deployment=deployment,
    )


@router.get("/agents/{agent_id}/edit")
async def edit_agent(agent_id: IdPath, request: Request, ctx: Ctx, viewer: Signed) -> Response:
    agent = await agents.get_agent(ctx, viewer.principal, agent_id)
    return await _form_page(request, ctx, viewer, agent=agent, values=_values_of(agent))


@router.post("/agents/{agent_id}/edit")
async def save_agent(agent_id: IdPath, request: Request, ctx: Ctx, viewer: Signed) -> Response:
    current = await agents.get_agent(ctx, viewer.principal, agent_id)
    form = await form_fields(request)
    fields = agent_fields(form, owner_field=viewer.is_admin)
    try:
        body = AgentPatch.model_validate({**_with_tools(fields, form), "version": _int(form.get("version"))})
        await agents.patch_agent(ctx, viewer.principal, agent_id, body, ExpectedVersion(version=body.version))
    except (ValidationError, UseCaseError) as e:
        values = {**fields, "version": current.version, "tools_json": form.get("tools", "")}
        return await _form_page(
            request, ctx, viewer, agent=current, values=values, errors=problems_of(e), status=status_of(e)
        )
    return see_other(f"/agents/{agent_id}", "agent-saved")


@router.post("/agents/{agent_id}/versions/{version}/restore")
async def restore_version(
    agent_id: IdPath, request: Request, ctx: Ctx, viewer: Signed, version: int = VersionPath
) -> Response:
    form = await form_fields(request)
    expected = ExpectedVersion(version=_int(form.get("current_version")))
    await agents.restore_version(ctx, viewer.principal, agent_id, version, expected)
    return see_other(f"/agents/{agent_id}", "agent-restored")


@router.post("/agents/{agent_id}/delete")
async def delete_agent(agent_id: IdPath, request: Request, ctx: Ctx, viewer: Signed) -> Response:
    form = await form_fields(request)
    await agents.delete_agent(ctx, viewer.principal, agent_id, ExpectedVersion(version=_int(form.get("version"))))
    return see_other("/agents", "agent-deleted")


@router.get("/agents/{agent_id}/talk")
async def talk(agent_id: IdPath, request: Request, ctx: Ctx, viewer: Signed) -> Response:
    """Talk to the agent by voice: the page's script opens a WebRTC call through this origin's API."""
    agent = await agents.get_agent(ctx, viewer.principal, agent_id)
    return page(request, "agents/talk.html", viewer, agent=agent)


@router.get("/agents/{agent_id}/chat")
async def chat(agent_id: IdPath, request: Request, ctx: Ctx, viewer: Signed) -> Response:
    """Talk to the agent by text: the page's script drives a chat call through this origin's API."""
    agent = await agents.get_agent(ctx, viewer.principal, agent_id)
    return page(request, "agents/chat.html", viewer, agent=agent)
