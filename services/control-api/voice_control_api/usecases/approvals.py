"""Tool calls of a call's agent, and a supervisor's decision on one that waits for approval.

The ledger (``tool_calls``, written by analytics from the bus) says which calls are pending; the decision goes to
brain as ``tool.approval_decided``, published like every command on a live call (``call_control``, audited with
the verdict, never the arguments). Brain keeps the pending call in the call's history and acts on the first
decision only, so a second click, another supervisor's or the platform's timeout racing this one cannot run the
tool twice; the event id is derived from the tool call, so two decisions published at once are one message.
"""

from __future__ import annotations

import asyncpg
from voice_schemas import events

from ..context import AppContext
from ..models_tools import ToolCallRecord
from ..principal import Principal
from ..store import tool_calls
from .call_control import command_live_call
from .common import connection, found
from .errors import Conflict
from .live_feed import visible_call


async def list_tool_calls(ctx: AppContext, principal: Principal, call_id: str) -> list[ToolCallRecord]:
    """The call's tool calls in order (live or ended). NotFound unless the principal sees the call."""
    await visible_call(ctx, principal, call_id)
    async with connection(ctx) as conn:
        return await tool_calls.list_for_call(conn, principal.tenant_id, call_id)


async def decide(ctx: AppContext, principal: Principal, call_id: str, tool_call_id: str, approved: bool,
                 comment: str | None) -> str:
    """Publish the decision on a pending tool call; its event id. NotFound unless the principal sees the call
    and the tool call is the call's; Conflict when the call is not live or the tool call is not pending."""
    async with connection(ctx) as conn:
        row = await tool_calls.get(conn, principal.tenant_id, call_id, tool_call_id)

    async def pending(_: asyncpg.Connection) -> None:
        found(row, "tool call")
        if row is not None and row.approval != "pending":
            raise Conflict(f"the tool call is not waiting for approval (approval: {row.approval})")

    data = events.ToolApprovalDecided(tool_call_id=tool_call_id, approved=approved, decided_by=principal.actor,
                                      comment=comment)
    return await command_live_call(
        ctx, principal, call_id, data, action="call.tool_decision", what="the decision", check=pending,
        event_id=f"{call_id}-{tool_call_id}-decision", turn_id=row.turn_id if row is not None else None,
        tool_call_id=tool_call_id, tool=row.name if row is not None else None, approved=approved,
    )
