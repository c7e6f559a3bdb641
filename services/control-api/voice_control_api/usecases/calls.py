"""Calls and their transcripts (read-only; analytics records them from the bus).

A supervisor sees the calls of the agents they own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ..context import AppContext
from ..fields import normalize_e164
from ..principal import Principal
from ..store import calls as store
from ..store.calls import CallRow, TurnRow
from .common import Listing, Pagination, connection
from .errors import NotFound


@dataclass(frozen=True)
class CallWithTurns:
    call: CallRow
    turns: list[TurnRow]  # in spoken order


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
) -> Listing[CallRow]:
    """``number`` matches the caller or the called number."""
    if number is not None:
        try:
            number = normalize_e164(number)
        except ValueError:
            pass  # match it as stored
    async with connection(ctx) as conn:
        rows = await store.list_(
            conn,
            principal.tenant_id,
            owner=principal.owner_filter,
            status=status,
            agent_id=agent_id,
            number=number,
            started_after=started_after,
            started_before=started_before,
            channel=channel,
            limit=paging.fetch,
            offset=paging.offset,
        )
    return paging.page(rows)


async def get_call(ctx: AppContext, principal: Principal, call_id: str) -> CallWithTurns:
    async with connection(ctx) as conn:
        call = await store.get(conn, principal.tenant_id, call_id, owner=principal.owner_filter)
        if call is None:
            raise NotFound("call")
        turns = await store.turns(conn, principal.tenant_id, call_id)
    return CallWithTurns(call=call, turns=turns)
