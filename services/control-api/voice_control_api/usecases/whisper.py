"""Whisper: a supervisor's instruction to the agent of a live call, followed from its next reply on and never
spoken (brain keeps it in the call's history as a supervisor note). Audited without its text."""

from __future__ import annotations

from voice_schemas import events

from ..context import AppContext
from ..principal import Principal
from .call_control import command_live_call


async def whisper(ctx: AppContext, principal: Principal, call_id: str, text: str) -> str:
    """Publish the whisper on the call's subjects; its event id. NotFound unless the principal sees the call
    (its tenant's; a supervisor's only for their agents), Conflict when the call is not live."""
    cmd = events.SupervisorWhispered(text=text, from_user=principal.actor)
    return await command_live_call(
        ctx, principal, call_id, cmd, action="call.whisper", what="the whisper", chars=len(text)
    )
