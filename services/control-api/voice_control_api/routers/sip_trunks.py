"""SIP trunks per tenant: where a PBX or carrier sends calls in, and how outbound calls leave; mirrored to the
``trunks`` KV bucket, where ingress reads them."""

from __future__ import annotations

from fastapi import APIRouter, Response

from ..deps import AUTHED, Admin, Ctx, Paging, errors
from ..models import Page
from ..models_trunks import SipTrunkCreate, SipTrunkOut, SipTrunkUpdate
from ..rest import IdPath, IfMatch, expected_version, set_etag
from ..usecases import trunks
from ..usecases.common import Listing

router = APIRouter(prefix="/v1/sip-trunks", tags=["sip-trunks"], responses=AUTHED)

_CHECKS = ("Credentials name tenant secrets (`PUT /v1/secrets/{name}`), which must exist (422 otherwise); their "
           "values are never accepted or returned here. CIDRs, number-rule regexes and templates, the proxy "
           "address and caller id are checked (422 naming the field).")


@router.post(
    "", status_code=201, response_model=SipTrunkOut, responses=errors(409),
    summary="Add a SIP trunk",
    description="The trunk is written to JetStream KV (`trunks` bucket, `t.<id>`). " + _CHECKS
    + " Audited (`sip_trunk.create`). Admins only.",
)
async def create_trunk(body: SipTrunkCreate, principal: Admin, ctx: Ctx, response: Response) -> SipTrunkOut:
    row = await trunks.create_trunk(ctx, principal, body)
    response.headers["Location"] = f"/v1/sip-trunks/{row.id}"
    set_etag(response, row.version)
    return row


@router.get("", response_model=Page[SipTrunkOut], summary="List the tenant's SIP trunks (admins)")
async def list_trunks(principal: Admin, ctx: Ctx, paging: Paging) -> Listing[SipTrunkOut]:
    return await trunks.list_trunks(ctx, principal, paging)


@router.get("/{trunk_id}", response_model=SipTrunkOut, responses=errors(404), summary="Get a SIP trunk (admins)")
async def get_trunk(trunk_id: IdPath, principal: Admin, ctx: Ctx, response: Response) -> SipTrunkOut:
    row = await trunks.get_trunk(ctx, principal, trunk_id)
    set_etag(response, row.version)
    return row


@router.patch(
    "/{trunk_id}", response_model=SipTrunkOut, responses=errors(404, 409, 412),
    summary="Change a SIP trunk",
    description="Unset fields stay; the result is checked as a whole. " + _CHECKS + " Audited (`sip_trunk.update`).",
)
async def update_trunk(
    trunk_id: IdPath, body: SipTrunkUpdate, principal: Admin, ctx: Ctx, response: Response, if_match: IfMatch = None
) -> SipTrunkOut:
    row = await trunks.update_trunk(ctx, principal, trunk_id, body, expected_version(if_match, body.version))
    set_etag(response, row.version)
    return row


@router.delete(
    "/{trunk_id}", status_code=204, responses=errors(404, 412), summary="Remove a SIP trunk",
    description="Its KV key is removed; calls in progress go on. Audited (`sip_trunk.delete`).",
)
async def delete_trunk(trunk_id: IdPath, principal: Admin, ctx: Ctx, if_match: IfMatch = None) -> Response:
    await trunks.delete_trunk(ctx, principal, trunk_id, expected_version(if_match))
    return Response(status_code=204)
