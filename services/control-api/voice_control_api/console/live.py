"""Live supervision in the console: the live calls a user may see (a supervisor: their own agents' calls, as the
calls API scopes them), and one call's page: its transcript as it happens (both speakers, partials included),
sentiment, the whisper box, approve / deny for tool calls that wait for a supervisor, transfer and end.

The call's page renders the facts it knows now; ``static/live.js`` then follows the call's live feed (server-sent
events from ``/v1/calls/{id}/events``, which replays the call from its start, so a page opened mid-call shows what
came before) and acts through the same API (whisper, decision, transfer, end) with the session's CSRF header.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from ..models import CallStatus
from ..rest import IdPath
from ..usecases import agents, calls
from ..usecases.common import Pagination
from ..usecases.errors import NotFound
from .web import ConsoleRoute, Ctx, Signed, agent_names, page

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)
LIVE_LIMIT = 100  # the live calls listed (newest first)


@router.get("/live")
async def live_calls(request: Request, ctx: Ctx, viewer: Signed) -> Response:
    items = []
    for status in (CallStatus.in_progress, CallStatus.ringing):
        listing = await calls.list_calls(
            ctx, viewer.principal, Pagination(limit=LIVE_LIMIT, offset=0), status=status.value, agent_id=None,
            number=None, channel=None, started_after=None, started_before=None,
        )
        items += listing.items
    items.sort(key=lambda c: c.started_at, reverse=True)
    return page(request, "live/list.html", viewer, items=items[:LIVE_LIMIT],
                agent_names=await agent_names(ctx, viewer))


@router.get("/live/{call_id}")
async def live_call(call_id: IdPath, request: Request, ctx: Ctx, viewer: Signed) -> Response:
    call = await calls.get_call(ctx, viewer.principal, call_id)
    try:
        agent_name = (await agents.get_agent(ctx, viewer.principal, call.agent_id)).name
    except NotFound:
        agent_name = None
    return page(request, "live/call.html", viewer, call=call, agent_name=agent_name, live=call.status != "ended")
