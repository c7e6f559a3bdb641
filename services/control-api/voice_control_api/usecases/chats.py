"""Text chats with an agent: a call of channel ``chat`` that ingress holds; control-api starts it, relays the user's
messages and ends it, over core NATS request/reply (``voice_schemas.chat``).

Who may chat: whoever may read the agent (an admin of its tenant, or the supervisor owning it). A chat is then
reachable only through its tenant (another tenant's is "not found") and, for a supervisor, only while they own its
agent. ingress starts a chat only against a call token minted here (channel ``chat``, bound to tenant and agent,
short-lived, used once), and it checks the tenant of every message again.

Whether a chat is live is read from the ``calls`` KV record ingress keeps while the call lasts; once it is gone, a
chat of the tenant in the calls table has ended (409 for a message), anything else is not found.
"""

from __future__ import annotations

from pydantic import BaseModel
from voice_runtime.logging import get_logger
from voice_schemas import CallRecord, subjects
from voice_schemas import chat as rpc
from voice_schemas.chat import ChatAnswer, ChatError

from ..context import AppContext
from ..models import ChatCreated, ChatReply
from ..principal import Principal
from ..store import agents as agent_store
from ..store import calls as call_store
from . import audit_log
from . import live as live_calls
from .common import connection, transaction
from .errors import Conflict, InvalidField, NotFound, TimedOut, Unavailable

log = get_logger(__name__)
ANSWER_GRACE_S = 5.0  # ingress answers a timed-out wait itself; this covers the hops around it


async def start_chat(ctx: AppContext, principal: Principal, agent_id: str) -> ChatCreated:
    """A new chat with the agent's current version; the agent's greeting once it has been sent."""
    token, agent_id = await live_calls.grant_call(ctx, principal, agent_id, rpc.CHANNEL, "text chats")
    wait_s = ctx.settings.chat_reply_timeout_s
    answer = await _ask(
        ctx, subjects.ingress_rpc(rpc.CHANNEL, rpc.OPEN), rpc.ChatOpen(token=token, wait_s=wait_s), wait_s
    )
    if answer.error is not None:
        raise _refusal(answer, opening=True)
    if not answer.call_id:
        raise Unavailable("ingress answered without a chat")
    async with transaction(ctx) as conn:
        await audit_log.record(conn, principal, "chat.start", "call", answer.call_id, agent_id=agent_id)
    return ChatCreated(call_id=answer.call_id, greeting=answer.greeting)


async def send_message(ctx: AppContext, principal: Principal, call_id: str, text: str) -> ChatReply:
    """The user's message to the chat; the agent's reply, once ingress has it (504 when it does not come)."""
    await _live_chat(ctx, principal, call_id)
    wait_s = ctx.settings.chat_reply_timeout_s
    body = rpc.ChatSay(tenant_id=principal.tenant_id, text=text, wait_s=wait_s)
    answer = await _ask(ctx, subjects.ingress_call_rpc(rpc.CHANNEL, call_id, rpc.SAY), body, wait_s, live=True)
    if answer.error is not None:
        raise _refusal(answer)
    return ChatReply(reply=answer.reply or "", turn=answer.turn or 0, ended=answer.ended)


async def end_chat(ctx: AppContext, principal: Principal, call_id: str) -> None:
    """End the chat; a chat that has already ended stays ended (no error)."""
    if await _live_chat(ctx, principal, call_id, ended_ok=True) is None:
        return
    body = rpc.ChatEnd(tenant_id=principal.tenant_id)
    try:
        answer = await _ask(ctx, subjects.ingress_call_rpc(rpc.CHANNEL, call_id, rpc.END), body, 0.0, live=True)
    except Conflict:
        return  # it ended on its own in the meantime
    if answer.error is not None and answer.error != ChatError.ended:
        raise _refusal(answer)


# ------------------------------------------------------------------ helpers
async def _live_chat(
    ctx: AppContext, principal: Principal, call_id: str, *, ended_ok: bool = False
) -> CallRecord | None:
    """The live chat's record, if this principal may use it. An ended chat of theirs: Conflict (None with
    ``ended_ok``); anything else, another tenant's chat included: NotFound."""
    record = await live_calls.call_record(ctx, call_id)
    if record is not None and record.tenant_id == principal.tenant_id and record.channel == rpc.CHANNEL:
        if principal.owner_filter is not None:  # a supervisor: only while they own the chat's agent
            async with connection(ctx) as conn:
                owned = await agent_store.get(conn, principal.tenant_id, record.agent_id, owner=principal.owner_filter)
            if owned is None:
                raise NotFound("chat")
        return record
    async with connection(ctx) as conn:
        call = await call_store.get(conn, principal.tenant_id, call_id, owner=principal.owner_filter)
    if call is None or call.channel != rpc.CHANNEL:
        raise NotFound("chat")
    if ended_ok:
        return None
    raise Conflict("the chat has ended")


async def _ask(ctx: AppContext, subject: str, body: BaseModel, wait_s: float, *, live: bool = False) -> ChatAnswer:
    """Ask ingress; its answer. Nobody serving ``subject``: a live chat's replica no longer holds it (Conflict:
    ended), or no ingress serves chats (Unavailable)."""
    nobody = Conflict("the chat has ended") if live else Unavailable("no ingress is serving text chats")
    return await live_calls.ask_ingress(ctx, subject, body, ChatAnswer, timeout_s=wait_s + ANSWER_GRACE_S,
                                        nobody=nobody)


def _refusal(answer: ChatAnswer, *, opening: bool = False) -> Exception:
    detail = answer.detail or "refused"
    match answer.error:
        case ChatError.timeout:
            return TimedOut(detail)
        case ChatError.busy:
            return Conflict(detail)
        case ChatError.ended:
            return Conflict("the chat has ended")
        case ChatError.not_found if opening:
            # the database knows the agent as active, the data plane does not (yet): KV catches up by resync
            return Conflict("the agent is not available to calls yet; try again shortly")
        case ChatError.not_found:
            return NotFound("chat")
        case ChatError.invalid:
            return InvalidField("text", detail)
        case ChatError.refused:
            # a token minted here a moment ago: the keys of control-api and ingress differ, or a clock is off
            log.error("chat_grant_refused", detail=detail)
            return Unavailable("ingress refused the chat's call grant (CALL_TOKEN_KEY must match in both)")
        case _:
            return Unavailable(detail)
