"""What control-api asks of the live data plane for browser calls and chats: the ``calls`` KV record ingress keeps
while a call lasts, and a core NATS request to ingress answered with a contract model."""

from __future__ import annotations

from typing import TypeVar

from nats.js.errors import KeyNotFoundError
from pydantic import BaseModel, ValidationError
from voice_runtime import calltoken
from voice_runtime.bus import NoResponders
from voice_runtime.logging import get_logger, safe_error
from voice_schemas import CallRecord, subjects
from voice_schemas.streams import KV_CALLS

from ..context import AppContext
from ..principal import Principal
from . import agents
from .errors import Conflict, NotConfigured, TimedOut, Unavailable

log = get_logger(__name__)
Answer = TypeVar("Answer", bound=BaseModel)


async def call_record(ctx: AppContext, call_id: str) -> CallRecord | None:
    """The live call's record; None when no such call is live (ended, unknown, or not a call id)."""
    kv = ctx.kv.get(KV_CALLS.bucket)
    if kv is None:
        raise Unavailable("the data plane is not connected")
    try:
        entry = await kv.get(subjects.call_key(call_id))
    except (KeyNotFoundError, subjects.InvalidSubjectToken):
        return None
    except Exception as e:
        log.warning("call_record_unreadable", call_id=call_id, error=safe_error(e, 200))
        raise Unavailable("live calls cannot be read now") from None
    try:
        return CallRecord.model_validate_json(entry.value) if entry.value else None
    except ValidationError:
        return None


async def ask_ingress(
    ctx: AppContext, subject: str, body: BaseModel, answer: type[Answer], *, timeout_s: float, nobody: Exception
) -> Answer:
    """Ask ingress on ``subject``; its answer. ``nobody`` is raised when no replica serves the subject."""
    if ctx.bus is None:
        raise Unavailable("the data plane is not connected")
    try:
        raw = await ctx.bus.request(subject, body.model_dump_json().encode(), timeout=timeout_s)
    except NoResponders:
        raise nobody from None
    except TimeoutError:
        raise TimedOut("ingress did not answer in time") from None
    try:
        return answer.model_validate_json(raw)
    except ValidationError:
        raise Unavailable("ingress gave an answer that cannot be read") from None


async def grant_call(ctx: AppContext, principal: Principal, agent_id: str, channel: str, what: str) -> tuple[str, str]:
    """A call token for one call over ``channel`` to an active agent the principal may read; (token, agent id).
    ``what`` names the kind of call in the error when CALL_TOKEN_KEY is unset."""
    agent = await agents.get_agent(ctx, principal, agent_id)
    if not agent.is_active:
        raise Conflict("the agent is not active")
    key = ctx.settings.call_token_key_bytes()
    if key is None:
        raise NotConfigured(f"{what} need CALL_TOKEN_KEY (the same value in control-api and ingress)")
    token, _ = calltoken.mint(
        key,
        tenant_id=principal.tenant_id,
        agent_id=agent.id,
        channel=channel,
        ttl_s=ctx.settings.call_token_ttl_s,
        subject=principal.actor,
    )
    return token, agent.id
