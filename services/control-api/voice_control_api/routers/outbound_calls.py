"""Outbound calls (``POST /v1/calls``) and the tenant's outbound allow-list they are held to."""

from __future__ import annotations

from fastapi import APIRouter

from ..deps import AUTHED, Auth, Ctx, errors
from ..models_trunks import OutboundAllowList, OutboundAllowListUpdate, OutboundCallCreate, OutboundCallStarted
from ..rest import IdPath
from ..usecases import outbound_calls

router = APIRouter(responses=AUTHED)


@router.post(
    "/v1/calls",
    status_code=202,
    response_model=OutboundCallStarted,
    responses=errors(403, 404, 409, 503),
    tags=["calls"],
    summary="Start an outbound call",
    description="The agent calls `to` over Twilio (the platform's Twilio account; `from` one of the tenant's "
    "numbers, default the agent's first) or a SIP trunk of the tenant (`from` default the trunk's caller id). "
    "`to` must be on the tenant's outbound allow-list and an ordinary number: premium-rate, shared-cost and "
    "other special numbers, and numbers of unknown format, are refused (403, nothing is dialled). 202 once "
    "ingress is dialling: follow the call in `GET /v1/calls/{id}` and the live feed (`call.dial_status`: "
    "ringing, answered, busy, no_answer, failed; then the call's events as for an inbound one). The agent's "
    "`outbound` settings decide who speaks first and what an answering machine gets. Audited (`call.dial`, "
    "without the number). Admins, or the supervisor owning the agent.",
)
async def start_call(body: OutboundCallCreate, principal: Auth, ctx: Ctx) -> OutboundCallStarted:
    return await outbound_calls.start_call(ctx, principal, body)


@router.get(
    "/v1/tenants/{tenant_id}/outbound-allow-list",
    response_model=OutboundAllowList,
    responses=errors(404),
    tags=["tenants"],
    summary="The tenant's outbound allow-list",
)
async def get_outbound_allow_list(tenant_id: IdPath, principal: Auth, ctx: Ctx) -> OutboundAllowList:
    return OutboundAllowList(patterns=await outbound_calls.get_allow_list(ctx, principal, tenant_id))


@router.put(
    "/v1/tenants/{tenant_id}/outbound-allow-list",
    response_model=OutboundAllowList,
    responses=errors(404),
    tags=["tenants"],
    summary="Replace the tenant's outbound allow-list (its admins)",
    description="Exact E.164 numbers or prefixes ending in `*` (`+49 30*` → `+4930*`); duplicates dropped; an "
    "invalid entry is a 422 naming it. Audited (`tenant.outbound_allow_list.update`, entries counted only).",
)
async def put_outbound_allow_list(
    tenant_id: IdPath, body: OutboundAllowListUpdate, principal: Auth, ctx: Ctx
) -> OutboundAllowList:
    return OutboundAllowList(patterns=await outbound_calls.put_allow_list(ctx, principal, tenant_id, body.patterns))
