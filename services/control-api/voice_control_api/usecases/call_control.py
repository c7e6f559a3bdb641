"""Call control through the API: end a live call, or transfer it to a destination on the tenant's allow-list.

Both are commands on the call's control subjects, which the ingress replica holding the caller's connection
follows (whichever replica that is), exactly as brain's own hang-up. They share one shape with the whisper
(``command_live_call``): the principal must see the call (its tenant's; a supervisor's only for their own agents),
the call must be live, and the command is published inside the transaction of its audit entry, so an entry stays
only for a command that was published. Audit entries never hold the destination of a transfer or anything said.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from voice_runtime.logging import get_logger, safe_error
from voice_schemas import events, make, subjects

from ..context import AppContext
from ..principal import Principal
from . import audit_log, transfers
from .common import transaction
from .errors import Conflict, Forbidden, InvalidField, Unavailable
from .live_feed import visible_call

log = get_logger(__name__)

Check = Callable[[asyncpg.Connection], Awaitable[None]]


async def command_live_call(
    ctx: AppContext,
    principal: Principal,
    call_id: str,
    data: Any,
    *,
    action: str,
    what: str,
    check: Check | None = None,
    event_id: str | None = None,
    turn_id: str | None = None,
    **details: Any,
) -> str:
    """Publish ``data`` (a payload of the call's subjects) for a live call the principal sees; its event id.
    NotFound unless the principal sees the call, Conflict when it is not live; ``check`` may refuse it (in the
    transaction, before anything is recorded); the audit entry ``action`` (with ``details``) is kept only when the
    command was published (else Unavailable, naming ``what``). ``event_id``: one derived from what the command
    is about, so that two of them published at once are one message to JetStream (default: a new id)."""
    if ctx.bus is None:
        raise Unavailable("the data plane is not connected")
    if not await visible_call(ctx, principal, call_id):
        raise Conflict("the call is not live")
    env = make(data, tenant_id=principal.tenant_id, call_id=call_id, turn_id=turn_id,
               event_id=event_id or subjects.new_id())
    async with transaction(ctx) as conn:
        if check is not None:
            await check(conn)
        await audit_log.record(conn, principal, action, "call", call_id, event_id=env.id, **details)
        try:
            await ctx.bus.publish(env)
        except Exception as e:
            log.warning("call_command_publish_failed", call_id=call_id, action=action, error=safe_error(e, 200))
            raise Unavailable(f"{what} could not be delivered now") from None
    return env.id


async def end_call(ctx: AppContext, principal: Principal, call_id: str, reason: str | None) -> str:
    """Hang up a live call now (what is still playing is cut): the call ends with reason ``supervisor``. The
    optional ``reason`` is the supervisor's note, kept in the audit entry only."""
    cmd = events.HangUp(reason=events.EndReason.supervisor, after_playout=False)
    return await command_live_call(
        ctx, principal, call_id, cmd, action="call.end", what="the hang-up", note=reason or None
    )


def destination_kind(target: str) -> str:
    return "sip" if transfers.is_sip_uri(target) else "number"


async def transfer_call(ctx: AppContext, principal: Principal, call_id: str, to: str) -> str:
    """Hand a live call to ``to`` (an E.164 number or a SIP URI) now. InvalidField when ``to`` is neither,
    Forbidden when it is not on the tenant's transfer allow-list (nothing is published then). Whether the
    transport can carry it out is known only to ingress: when it cannot, ``call.transfer_failed`` follows on the
    call and the call goes on."""
    try:
        target = transfers.parse_target(to)
    except ValueError as e:
        raise InvalidField("to", str(e)) from None

    async def on_allow_list(conn: asyncpg.Connection) -> None:
        if not transfers.permits(await transfers.allowed_targets(conn, principal.tenant_id), target):
            raise Forbidden("the destination is not on the tenant's transfer allow-list")

    cmd = events.Transfer(target=target, after_playout=False, requested_by="supervisor")
    return await command_live_call(
        ctx,
        principal,
        call_id,
        cmd,
        action="call.transfer",
        what="the transfer",
        check=on_allow_list,
        destination=destination_kind(target),
    )
