"""Calls and transcripts (read-only; recorded by analytics from the bus)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ..deps import AUTHED, Auth, Ctx, Paging, QueryText, QueryTime, errors
from ..fields import normalize_e164
from ..models import Call, CallDetail, CallStatus, Page
from ..problems import not_found
from ..rest import IdPath, page
from ..store import calls as store

router = APIRouter(prefix="/v1/calls", tags=["calls"], responses=AUTHED)


@router.get(
    "",
    response_model=Page[Call],
    summary="List calls (newest first)",
    description="Filters: `status`, `agent_id`, `number` (caller or called, E.164), `channel`, and a time range "
    "on `started_at` (`started_after` inclusive, `started_before` exclusive). Supervisors see the calls of their "
    "own agents.",
)
async def list_calls(
    principal: Auth,
    ctx: Ctx,
    paging: Paging,
    status: CallStatus | None = None,
    agent_id: QueryText = None,
    number: QueryText = None,
    channel: QueryText = None,
    started_after: QueryTime = None,
    started_before: QueryTime = None,
) -> dict[str, Any]:
    if number is not None:
        try:
            number = normalize_e164(number)
        except ValueError:
            pass  # match it as stored
    async with ctx.pool.acquire() as conn:
        rows = await store.list_(
            conn,
            principal.tenant_id,
            owner=principal.owner_filter,
            status=status.value if status else None,
            agent_id=agent_id,
            number=number,
            started_after=started_after,
            started_before=started_before,
            channel=channel,
            limit=paging.limit + 1,
            offset=paging.offset,
        )
    return page(rows, paging)


@router.get(
    "/{call_id}",
    response_model=CallDetail,
    responses=errors(404),
    summary="Get a call with its transcript",
    description="`turns` are in spoken order. `latency_ms` is the turn's voice-to-voice time (end of caller speech "
    "to the agent's first audio) and `latency` its per-stage breakdown in milliseconds.",
)
async def get_call(call_id: IdPath, principal: Auth, ctx: Ctx) -> dict[str, Any]:
    async with ctx.pool.acquire() as conn:
        call = await store.get(conn, principal.tenant_id, call_id, owner=principal.owner_filter)
        if call is None:
            raise not_found("call")
        turns = await store.turns(conn, principal.tenant_id, call_id)
    return {**call, "turns": turns}
