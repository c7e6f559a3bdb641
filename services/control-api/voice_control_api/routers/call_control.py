"""Call control: end a live call, transfer it, and the tenant's transfer allow-list those transfers are held to."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from pydantic import AfterValidator, BaseModel, Field

from ..deps import AUTHED, Auth, Ctx, errors
from ..fields import clean_text
from ..models import RequestModel, TransferAllowList, TransferAllowListUpdate
from ..rest import IdPath
from ..usecases import call_control, transfers

router = APIRouter(tags=["live"], responses=AUTHED)

_WHO = "Admins, or the supervisor who owns the call's agent; 404 for any other call, 409 when the call is not live."


class EndCallIn(RequestModel):
    reason: Annotated[str, AfterValidator(clean_text)] | None = Field(
        None, max_length=200, description="Why (kept in the audit log, nowhere else)"
    )


class TransferIn(RequestModel):
    to: Annotated[str, AfterValidator(clean_text)] = Field(
        min_length=1,
        max_length=256,
        description="An E.164 number or a SIP URI on the tenant's transfer allow-list",
        examples=["+493012345678"],
    )


class CommandSent(BaseModel):
    call_id: str
    event_id: str = Field(description="The command's event id (`control.hangup` / `control.transfer`)")


@router.post(
    "/v1/calls/{call_id}/end",
    status_code=202,
    response_model=CommandSent,
    responses=errors(404, 409, 503),
    summary="End a live call",
    description="Hangs up at once (what is still playing to the caller is cut); the call ends with reason "
    "`supervisor`. Audited (`call.end`, with the optional reason). " + _WHO,
)
async def end_call(call_id: IdPath, principal: Auth, ctx: Ctx, body: EndCallIn | None = None) -> CommandSent:
    reason = body.reason if body is not None else None
    event_id = await call_control.end_call(ctx, principal, call_id, reason)
    return CommandSent(call_id=call_id, event_id=event_id)


@router.post(
    "/v1/calls/{call_id}/transfer",
    status_code=202,
    response_model=CommandSent,
    responses=errors(404, 409, 503),
    summary="Transfer a live call to a number or SIP URI",
    description="The destination must be on the tenant's transfer allow-list (403 otherwise: nothing is sent). "
    "The caller's transport carries it out: a Twilio call is redirected through Twilio's REST API and ends here "
    "with reason `transferred`; where the transport cannot transfer (browser calls, chats) or the provider "
    "refuses, the call goes on and `call.transfer_failed` follows in the live feed. Audited (`call.transfer`, "
    "without the destination). " + _WHO,
)
async def transfer_call(call_id: IdPath, body: TransferIn, principal: Auth, ctx: Ctx) -> CommandSent:
    event_id = await call_control.transfer_call(ctx, principal, call_id, body.to)
    return CommandSent(call_id=call_id, event_id=event_id)


@router.get(
    "/v1/tenants/{tenant_id}/transfer-allow-list",
    response_model=TransferAllowList,
    responses=errors(404),
    tags=["tenants"],
    summary="The tenant's transfer allow-list",
)
async def get_transfer_allow_list(tenant_id: IdPath, principal: Auth, ctx: Ctx) -> TransferAllowList:
    return TransferAllowList(patterns=await transfers.get_allow_list(ctx, principal, tenant_id))


@router.put(
    "/v1/tenants/{tenant_id}/transfer-allow-list",
    response_model=TransferAllowList,
    responses=errors(404),
    tags=["tenants"],
    summary="Replace the tenant's transfer allow-list (its admins)",
    description="Entries are normalised (`+49 30*` → `+4930*`) and duplicates dropped; an invalid entry is a "
    "422 naming it. Audited (`tenant.transfer_allow_list.update`, with the number of entries only).",
)
async def put_transfer_allow_list(
    tenant_id: IdPath, body: TransferAllowListUpdate, principal: Auth, ctx: Ctx
) -> TransferAllowList:
    return TransferAllowList(patterns=await transfers.put_allow_list(ctx, principal, tenant_id, body.patterns))
