"""Calls and their transcripts (read-only; analytics records them from the bus).

A supervisor sees the calls of the agents they own.
"""

from __future__ import annotations

from datetime import datetime

from ..context import AppContext
from ..fields import normalize_e164
from ..models import Call, CallDetail
from ..principal import Principal
from ..store import calls as store
from .common import Listing, Pagination, connection, fetch_page, found


async def list_calls(
    ctx: AppContext,
    principal: Principal,
    paging: Pagination,
    *,
    status: str | None,
    agent_id: str | None,
    number: str | None,
    channel: str | None,
    started_after: datetime | None,
    started_before: datetime | None,
) -> Listing[Call]:
    """``number`` matches the caller or the called number."""
    if number is not None:
        try:
            number = normalize_e164(number)
        except ValueError:
            pass  # match it as stored
    return await fetch_page(
        ctx,
        paging,
        store.list_,
        principal.tenant_id,
        owner=principal.owner_filter,
        status=status,
        agent_id=agent_id,
        number=number,
        started_after=started_after,
        started_before=started_before,
        channel=channel,
    )


async def get_call(ctx: AppContext, principal: Principal, call_id: str) -> CallDetail:
    """The call with its turns, in spoken order."""
    async with connection(ctx) as conn:
        call = found(await store.get(conn, principal.tenant_id, call_id, owner=principal.owner_filter), "call")
        turns = await store.turns(conn, principal.tenant_id, call_id)
    return CallDetail(**call.model_dump(), turns=turns)
