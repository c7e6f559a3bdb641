"""Calls and transcripts (read-only; recorded by analytics from the bus)."""

from __future__ import annotations

from fastapi import APIRouter

from ..deps import AUTHED, Auth, Ctx, Paging, QueryText, QueryTime, errors
from ..models import Call, CallDetail, CallStatus, Page
from ..rest import IdPath
from ..usecases import calls
from ..usecases.common import Listing

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
) -> Listing[Call]:
    return await calls.list_calls(
        ctx,
        principal,
        paging,
        status=status.value if status else None,
        agent_id=agent_id,
        number=number,
        channel=channel,
        started_after=started_after,
        started_before=started_before,
    )


@router.get(
    "/{call_id}",
    response_model=CallDetail,
    responses=errors(404),
    summary="Get a call with its transcript",
    description="`turns` are in spoken order. `latency_ms` is the turn's voice-to-voice time (end of caller speech "
    "to the agent's first audio) and `latency` its per-stage breakdown in milliseconds.",
)
async def get_call(call_id: IdPath, principal: Auth, ctx: Ctx) -> CallDetail:
    return await calls.get_call(ctx, principal, call_id)
