"""Outbound calls (``POST /v1/calls``) and the tenant's outbound allow-list they are held to (against toll fraud).

A call may only dial a destination that is:

- a valid E.164 number of an ordinary kind (fixed line, mobile, toll-free, VoIP: ``phonenumbers`` decides);
  premium-rate, shared-cost, personal, UAN, pager and voicemail numbers and numbers of unknown format are
  refused even when listed, so a prefix such as ``+1*`` cannot open ``+1900...``;
- on the tenant's outbound allow-list: exact numbers, or prefixes ending in ``*`` (empty list: no call).

Refusals are 403 problems naming the rule (never the number). The caller id is checked too: over Twilio it must
be one of the tenant's phone numbers (default: the first number routed to the agent); over SIP it defaults to the
trunk's ``outbound_caller_id``. control-api mints the call id and asks ingress (core request/reply on
``ingress.rpc.dial.place``, one replica takes it) to place the call; the call's progress (``call.dial_status``:
ringing, answered, busy, no_answer, failed) and its lifecycle then flow as for an inbound call.
"""

from __future__ import annotations

import phonenumbers
from phonenumbers import PhoneNumberType
from voice_schemas import events, subjects

from ..context import AppContext
from ..fields import normalize_e164
from ..models_trunks import OutboundCallCreate, OutboundCallStarted
from ..principal import Principal
from ..store import numbers as number_store
from ..store import tenants as tenant_store
from ..store import trunks as trunk_store
from . import agents, audit_log, live, transfers
from .common import connection, found, transaction
from .errors import Conflict, Forbidden, InvalidField, NotFound, Unavailable

DIAL_TIMEOUT_S = 10.0  # ingress answers once the call is created and the dial started, not when it is answered
_ORDINARY = {
    PhoneNumberType.FIXED_LINE, PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE,
    PhoneNumberType.TOLL_FREE, PhoneNumberType.VOIP,
}


def parse_patterns(values: list[str]) -> list[str]:
    """The outbound allow-list, normalised: E.164 numbers and number prefixes ending in ``*`` (no SIP URIs)."""
    return transfers.parse_patterns(values, transfers.parse_number_pattern)


def ordinary(e164: str) -> bool:
    """Whether the number is valid and of a kind calls may go to (not premium-rate, shared-cost, ...)."""
    try:
        parsed = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(parsed) and phonenumbers.number_type(parsed) in _ORDINARY


def permits(patterns: list[str], e164: str) -> bool:
    return any(e164.startswith(p[:-1]) if p.endswith("*") else p == e164 for p in patterns)


def check_destination(patterns: list[str], to: str) -> str:
    """The destination, normalised, when a call may go there; InvalidField / Forbidden otherwise."""
    try:
        number = normalize_e164(to)
    except ValueError as e:
        raise InvalidField("to", str(e)) from None
    if not ordinary(number):
        raise Forbidden("the destination is a premium-rate, shared-cost or otherwise special number, or of an "
                        "unknown format: outbound calls may only go to ordinary fixed, mobile or toll-free numbers")
    if not permits(patterns, number):
        raise Forbidden("the destination is not on the tenant's outbound allow-list "
                        "(PUT /v1/tenants/{tenant_id}/outbound-allow-list)")
    return number


async def start_call(ctx: AppContext, principal: Principal, body: OutboundCallCreate) -> OutboundCallStarted:
    agent = await agents.get_agent(ctx, principal, body.agent_id)  # 404 unless the principal may read it
    if not agent.is_active:
        raise Conflict("the agent is not active")
    async with connection(ctx) as conn:
        to = check_destination(await trunk_store.outbound_allow_list(conn, principal.tenant_id), body.to)
        caller_id = body.from_
        if body.channel == "sip":
            assert body.trunk_id is not None
            trunk = await trunk_store.get(conn, principal.tenant_id, body.trunk_id)
            if trunk is None:
                raise InvalidField("trunk_id", "no such SIP trunk in this tenant")
            if not trunk.outbound_proxy:
                raise InvalidField("trunk_id", "the trunk has no outbound_proxy: it cannot place calls")
            caller_id = caller_id or trunk.outbound_caller_id
        else:
            owned = await number_store.list_(conn, principal.tenant_id, owner=None,
                                             agent_id=agent.id if caller_id is None else None, number=caller_id,
                                             limit=1, offset=0)
            if not owned:
                raise InvalidField("from", "give a caller id: the agent has no phone number to call from"
                                   if caller_id is None else "the caller id must be one of the tenant's phone numbers")
            caller_id = owned[0].number
    call_id = subjects.new_call_id()
    request = events.DialRequest(
        call_id=call_id, tenant_id=principal.tenant_id, agent_id=agent.id, to_number=to, from_number=caller_id,
        channel=body.channel, trunk_id=body.trunk_id, agent_speaks_first=agent.outbound.speaks_first,
        machine_detection=agent.outbound.machine_detection,
    )
    reply = await live.ask_ingress(
        ctx, subjects.ingress_rpc("dial", "place"), request, events.DialReply, timeout_s=DIAL_TIMEOUT_S,
        nobody=Unavailable("no ingress is placing outbound calls"),
    )
    if not reply.accepted:
        raise Unavailable(f"ingress did not place the call: {reply.detail or 'refused'}")
    async with transaction(ctx) as conn:
        await audit_log.record(conn, principal, "call.dial", "call", call_id, agent_id=agent.id,
                               channel=body.channel, trunk_id=body.trunk_id)
    return OutboundCallStarted(call_id=call_id)


def _check_tenant(principal: Principal, tenant_id: str) -> None:
    if not (principal.platform_admin or principal.tenant_id == tenant_id):
        raise NotFound("tenant")


async def get_allow_list(ctx: AppContext, principal: Principal, tenant_id: str) -> list[str]:
    _check_tenant(principal, tenant_id)
    async with connection(ctx) as conn:
        found(await tenant_store.get(conn, tenant_id), "tenant")
        return await trunk_store.outbound_allow_list(conn, tenant_id)


async def put_allow_list(ctx: AppContext, principal: Principal, tenant_id: str, values: list[str]) -> list[str]:
    """Replace the list (admins only). Audited with its size, never its numbers."""
    _check_tenant(principal, tenant_id)
    if not (principal.platform_admin or principal.is_admin):
        raise Forbidden("admin role required")
    patterns = parse_patterns(values)
    async with transaction(ctx) as conn:
        found(await tenant_store.get(conn, tenant_id, for_update=True), "tenant")
        await trunk_store.replace_outbound_allow_list(conn, tenant_id, patterns)
        await audit_log.record(conn, principal, "tenant.outbound_allow_list.update", "tenant", tenant_id,
                               tenant_id=tenant_id, entries=len(patterns))
    return patterns
