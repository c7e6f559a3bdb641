"""Browser calls (WebRTC) to an agent: control-api is the browser's only origin, ingress holds the media.

Who may call: whoever may read the agent (an admin of its tenant, or the supervisor owning it). control-api mints a
short-lived call token bound to tenant, agent and channel ``webrtc`` and forwards the browser's offer with it to
ingress over core NATS request/reply (``voice_schemas.webrtc``); the replica that takes it verifies the token, uses
it up and answers with the SDP answer once ICE gathering is done.

Hanging up is the ``control.hangup`` command on the bus (reason ``caller_hangup``, at once), which the replica
holding the call acts on. Whether a call is live is read from the ``calls`` KV record ingress keeps while it lasts.
"""

from __future__ import annotations

from voice_runtime.logging import get_logger
from voice_schemas import events, make, subjects
from voice_schemas import webrtc as rpc
from voice_schemas.webrtc import WebRtcAnswer, WebRtcError, WebRtcOffer

from ..context import AppContext
from ..models import WebCallAnswer
from ..principal import Principal
from ..store import agents as agent_store
from ..store import calls as call_store
from . import audit_log
from . import live as live_calls
from .common import connection, transaction
from .errors import Conflict, InvalidField, NotFound, Unavailable

log = get_logger(__name__)
# ingress answers once ICE gathering is done: at once with host candidates only, up to aioice's 5 s per STUN/TURN
# server otherwise; the rest covers the hops and a busy replica
OFFER_TIMEOUT_S = 15.0


async def start_web_call(ctx: AppContext, principal: Principal, agent_id: str, sdp: str) -> WebCallAnswer:
    """A browser call to the agent's current version: the SDP answer for the browser's offer."""
    token, agent_id = await live_calls.grant_call(ctx, principal, agent_id, rpc.CHANNEL, "browser calls")
    answer = await _offer(ctx, WebRtcOffer(token=token, sdp=sdp))
    if answer.error is not None:
        raise _refusal(answer)
    if not answer.call_id or not answer.sdp:
        raise Unavailable("ingress answered without a call")
    async with transaction(ctx) as conn:
        await audit_log.record(conn, principal, "web_call.start", "call", answer.call_id, agent_id=agent_id)
    return WebCallAnswer(call_id=answer.call_id, sdp=answer.sdp)


async def end_web_call(ctx: AppContext, principal: Principal, call_id: str) -> None:
    """Hang the browser call up (reason ``caller_hangup``); one that has already ended stays ended (no error)."""
    record = await live_calls.call_record(ctx, call_id)
    if record is None or record.tenant_id != principal.tenant_id or record.channel != rpc.CHANNEL:
        async with connection(ctx) as conn:
            call = await call_store.get(conn, principal.tenant_id, call_id, owner=principal.owner_filter)
        if call is None or call.channel != rpc.CHANNEL:
            raise NotFound("web call")
        return  # ended already
    if principal.owner_filter is not None:  # a supervisor: only the calls of the agents they own
        async with connection(ctx) as conn:
            owned = await agent_store.get(conn, principal.tenant_id, record.agent_id, owner=principal.owner_filter)
        if owned is None:
            raise NotFound("web call")
    if ctx.bus is None:
        raise Unavailable("the data plane is not connected")
    hang_up = events.HangUp(reason=events.EndReason.caller_hangup, after_playout=False)
    await ctx.bus.publish(make(hang_up, tenant_id=record.tenant_id, call_id=call_id))


# ------------------------------------------------------------------ helpers
async def _offer(ctx: AppContext, offer: WebRtcOffer) -> WebRtcAnswer:
    return await live_calls.ask_ingress(
        ctx, subjects.ingress_rpc(rpc.CHANNEL, rpc.OFFER), offer, WebRtcAnswer, timeout_s=OFFER_TIMEOUT_S,
        nobody=Unavailable("no ingress is serving browser calls"),
    )


def _refusal(answer: WebRtcAnswer) -> Exception:
    detail = answer.detail or "refused"
    match answer.error:
        case WebRtcError.invalid:
            return InvalidField("sdp", detail)
        case WebRtcError.not_found:
            # the database knows the agent as active, the data plane does not (yet): KV catches up by resync
            return Conflict("the agent is not available to calls yet; try again shortly")
        case WebRtcError.busy:
            return Unavailable(detail)
        case WebRtcError.refused:
            # a token minted here a moment ago: the keys of control-api and ingress differ, or a clock is off
            log.error("web_call_grant_refused", detail=detail)
            return Unavailable("ingress refused the call grant (CALL_TOKEN_KEY must be the same in both)")
        case _:
            return Unavailable(detail)
