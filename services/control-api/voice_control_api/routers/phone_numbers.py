"""Phone numbers (E.164, unique across the platform) routed to agents; mirrored to the ``numbers`` KV bucket."""

from __future__ import annotations

from typing import Any

import asyncpg
from fastapi import APIRouter, Response
from voice_runtime.logging import get_logger
from voice_schemas.agent import NumberRoute

from .. import audit
from ..context import AppContext
from ..deps import AUTHED, Admin, Auth, Ctx, Paging, QueryText, errors
from ..fields import normalize_e164
from ..models import Page, PhoneNumber, PhoneNumberCreate, PhoneNumberUpdate
from ..problems import conflict, invalid, not_found
from ..rest import IdPath, IfMatch, check_precondition, page, set_etag
from ..security import new_id
from ..store import numbers as store

log = get_logger(__name__)
router = APIRouter(prefix="/v1/phone-numbers", tags=["phone-numbers"], responses=AUTHED)


async def _lock_agent(conn: asyncpg.Connection, tenant_id: str, agent_id: str) -> None:
    """The target agent must be live in this tenant; FOR SHARE keeps it from being deleted meanwhile."""
    found = await conn.fetchval(
        "SELECT 1 FROM agents WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL FOR SHARE", tenant_id, agent_id
    )
    if not found:
        raise invalid("body.agent_id", "no such agent in this tenant")


async def _push(ctx: AppContext, row: dict[str, Any], old_number: str | None = None) -> None:
    try:
        if old_number is not None and old_number != row["number"]:
            await ctx.publisher.retract_number(old_number)
        await ctx.publisher.publish_number(
            NumberRoute(number=row["number"], tenant_id=row["tenant_id"], agent_id=row["agent_id"])
        )
    except Exception as e:
        log.warning("kv_publish_failed", number_id=row["id"], error=repr(e)[:300])
        ctx.request_resync()


@router.post(
    "",
    status_code=201,
    response_model=PhoneNumber,
    responses=errors(409),
    summary="Route a phone number to an agent",
    description="The number is normalised to E.164. Its route is written to JetStream KV (`numbers` bucket).",
)
async def create_number(body: PhoneNumberCreate, principal: Admin, ctx: Ctx, response: Response) -> dict[str, Any]:
    number_id = new_id()
    async with ctx.pool.acquire() as conn, conn.transaction():
        await _lock_agent(conn, principal.tenant_id, body.agent_id)
        try:
            row = await store.create(
                conn, number_id=number_id, tenant_id=principal.tenant_id, number=body.number, agent_id=body.agent_id
            )
        except asyncpg.UniqueViolationError:
            raise conflict("this number is already registered") from None
        await audit.record(conn, principal, "phone_number.create", "phone_number", number_id, agent_id=body.agent_id)
    await _push(ctx, row)
    response.headers["Location"] = f"/v1/phone-numbers/{number_id}"
    set_etag(response, row["version"])
    return row


@router.get(
    "",
    response_model=Page[PhoneNumber],
    summary="List phone numbers",
    description="Supervisors see the numbers routed to their own agents.",
)
async def list_numbers(
    principal: Auth, ctx: Ctx, paging: Paging, agent_id: QueryText = None, number: QueryText = None
) -> dict[str, Any]:
    if number is not None:
        try:
            number = normalize_e164(number)
        except ValueError:
            return page([], paging)
    async with ctx.pool.acquire() as conn:
        rows = await store.list_(
            conn,
            principal.tenant_id,
            owner=principal.owner_filter,
            agent_id=agent_id,
            number=number,
            limit=paging.limit + 1,
            offset=paging.offset,
        )
    return page(rows, paging)


@router.get("/{number_id}", response_model=PhoneNumber, responses=errors(404), summary="Get a phone number")
async def get_number(number_id: IdPath, principal: Auth, ctx: Ctx, response: Response) -> dict[str, Any]:
    async with ctx.pool.acquire() as conn:
        row = await store.get(conn, principal.tenant_id, number_id, owner=principal.owner_filter)
    if row is None:
        raise not_found("phone number")
    set_etag(response, row["version"])
    return row


@router.patch(
    "/{number_id}",
    response_model=PhoneNumber,
    responses=errors(404, 409, 412),
    summary="Reassign a number to another agent, or change the number",
)
async def update_number(
    number_id: IdPath,
    body: PhoneNumberUpdate,
    principal: Admin,
    ctx: Ctx,
    response: Response,
    if_match: IfMatch = None,
) -> dict[str, Any]:
    async with ctx.pool.acquire() as conn, conn.transaction():
        current = await store.get(conn, principal.tenant_id, number_id, for_update=True)
        if current is None:
            raise not_found("phone number")
        check_precondition(current["version"], if_match, body.version)
        number = body.number or current["number"]
        agent_id = body.agent_id or current["agent_id"]
        if agent_id != current["agent_id"]:
            await _lock_agent(conn, principal.tenant_id, agent_id)
        try:
            row = await store.update(conn, principal.tenant_id, number_id, number=number, agent_id=agent_id)
        except asyncpg.UniqueViolationError:
            raise conflict("this number is already registered") from None
        fields = [f for f in ("number", "agent_id") if row[f] != current[f]]
        await audit.record(
            conn,
            principal,
            "phone_number.update",
            "phone_number",
            number_id,
            fields=fields,
            agent_id=agent_id,
            version=row["version"],
        )
    await _push(ctx, row, old_number=current["number"])
    set_etag(response, row["version"])
    return row


@router.delete(
    "/{number_id}",
    status_code=204,
    responses=errors(404, 412),
    summary="Release a phone number",
    description="Its route is removed from KV.",
)
async def delete_number(number_id: IdPath, principal: Admin, ctx: Ctx, if_match: IfMatch = None) -> Response:
    async with ctx.pool.acquire() as conn, conn.transaction():
        current = await store.get(conn, principal.tenant_id, number_id, for_update=True)
        if current is None:
            raise not_found("phone number")
        check_precondition(current["version"], if_match, None)
        await store.delete(conn, principal.tenant_id, number_id)
        await audit.record(conn, principal, "phone_number.delete", "phone_number", number_id)
    try:
        await ctx.publisher.retract_number(current["number"])
    except Exception as e:
        log.warning("kv_retract_failed", number_id=number_id, error=repr(e)[:300])
        ctx.request_resync()
    return Response(status_code=204)
