"""Whisper: a supervisor's instruction to the agent of a live call, followed from its next reply on and never
spoken (brain keeps it in the call's history as a supervisor note). Audited without its text."""

from __future__ import annotations

from voice_runtime.logging import get_logger, safe_error
from voice_schemas import events, make, subjects

from ..context import AppContext
from ..principal import Principal
from . import audit_log
from .common import transaction
from .errors import Conflict, Unavailable
from .live_feed import visible_call

log = get_logger(__name__)


async def whisper(ctx: AppContext, principal: Principal, call_id: str, text: str) -> str:
    """Publish the whisper on the call's subjects; its event id. NotFound unless the principal sees the call
    (its tenant's; a supervisor's only for their agents), Conflict when the call is not live."""
    if ctx.bus is None:
        raise Unavailable("the data plane is not connected")
    if not await visible_call(ctx, principal, call_id):
        raise Conflict("the call is not live")
    env = make(
        events.SupervisorWhispered(text=text, from_user=principal.actor),
        tenant_id=principal.tenant_id,
        call_id=call_id,
        event_id=subjects.new_id(),
    )
    async with transaction(ctx) as conn:  # the audit entry stays only when the whisper was published
        await audit_log.record(conn, principal, "call.whisper", "call", call_id, chars=len(text), event_id=env.id)
        try:
            await ctx.bus.publish(env)
        except Exception as e:
            log.warning("whisper_publish_failed", call_id=call_id, error=safe_error(e, 200))
            raise Unavailable("the whisper could not be delivered now") from None
    return env.id
