"""Phone numbers (E.164, unique across the platform) routed to agents; mirrored to the ``numbers`` KV bucket."""

from __future__ import annotations

from fastapi import APIRouter, Response

from ..deps import AUTHED, Admin, Auth, Ctx, Paging, QueryText, errors
from ..models import Page, PhoneNumber, PhoneNumberCreate, PhoneNumberUpdate
from ..rest import IdPath, IfMatch, expected_version, set_etag
from ..usecases import phone_numbers
from ..usecases.common import Listing

router = APIRouter(prefix="/v1/phone-numbers", tags=["phone-numbers"], responses=AUTHED)


@router.post(
    "",
    status_code=201,
    response_model=PhoneNumber,
    responses=errors(409),
    summary="Route a phone number to an agent",
    description="The number is normalised to E.164. Its route is written to JetStream KV (`numbers` bucket).",
)
async def create_number(body: PhoneNumberCreate, principal: Admin, ctx: Ctx, response: Response) -> PhoneNumber:
    row = await phone_numbers.create_number(ctx, principal, body)
    response.headers["Location"] = f"/v1/phone-numbers/{row.id}"
    set_etag(response, row.version)
    return row


@router.get(
    "",
    response_model=Page[PhoneNumber],
    summary="List phone numbers",
    description="Supervisors see the numbers routed to their own agents.",
)
async def list_numbers(
    principal: Auth, ctx: Ctx, paging: Paging, agent_id: QueryText = None, number: QueryText = None
) -> Listing[PhoneNumber]:
    return await phone_numbers.list_numbers(ctx, principal, paging, agent_id=agent_id, number=number)


@router.get("/{number_id}", response_model=PhoneNumber, responses=errors(404), summary="Get a phone number")
async def get_number(number_id: IdPath, principal: Auth, ctx: Ctx, response: Response) -> PhoneNumber:
    row = await phone_numbers.get_number(ctx, principal, number_id)
    set_etag(response, row.version)
    return row


@router.patch(
    "/{number_id}",
    response_model=PhoneNumber,
    responses=errors(404, 409, 412),
    summary="Reassign a number to another agent, or change the number",
)
async def update_number(
    number_id: IdPath,
    body: PhoneNumberUpdate,
    principal: Admin,
    ctx: Ctx,
    response: Response,
    if_match: IfMatch = None,
) -> PhoneNumber:
    row = await phone_numbers.update_number(ctx, principal, number_id, body, expected_version(if_match, body.version))
    set_etag(response, row.version)
    return row


@router.delete(
    "/{number_id}",
    status_code=204,
    responses=errors(404, 412),
    summary="Release a phone number",
    description="Its route is removed from KV.",
)
async def delete_number(number_id: IdPath, principal: Admin, ctx: Ctx, if_match: IfMatch = None) -> Response:
    await phone_numbers.delete_number(ctx, principal, number_id, expected_version(if_match))
    return Response(status_code=204)
