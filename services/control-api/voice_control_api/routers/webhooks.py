"""Webhook endpoints (admins) and their delivery log. Deliveries, signed per Standard Webhooks with the endpoint's
secret, are made by analytics."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from ..deps import AUTHED, Admin, Ctx, Paging, errors
from ..models import (
    Page,
    Webhook,
    WebhookCreate,
    WebhookDelivery,
    WebhookEvent,
    WebhookUpdate,
    WebhookWithSecret,
)
from ..rest import IdPath, IfMatch, expected_version, set_etag
from ..usecases import webhooks
from ..usecases.common import Listing

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=AUTHED)


@router.post(
    "",
    status_code=201,
    response_model=WebhookWithSecret,
    summary="Register a webhook endpoint",
    description="The signing secret is returned here and by rotate-secret only.",
)
async def create_webhook(body: WebhookCreate, principal: Admin, ctx: Ctx, response: Response) -> WebhookWithSecret:
    row = await webhooks.create_webhook(ctx, principal, body)
    response.headers["Location"] = f"/v1/webhooks/{row.id}"
    set_etag(response, row.version)
    return row


@router.get("", response_model=Page[Webhook], summary="List webhook endpoints")
async def list_webhooks(
    principal: Admin,
    ctx: Ctx,
    paging: Paging,
    is_active: bool | None = None,
    event: Annotated[WebhookEvent | None, Query(description="Endpoints subscribed to this event")] = None,
) -> Listing[Webhook]:
    return await webhooks.list_webhooks(ctx, principal, paging, is_active=is_active, event=event)


@router.get("/{webhook_id}", response_model=Webhook, responses=errors(404), summary="Get a webhook endpoint")
async def get_webhook(webhook_id: IdPath, principal: Admin, ctx: Ctx, response: Response) -> Webhook:
    row = await webhooks.get_webhook(ctx, principal, webhook_id)
    set_etag(response, row.version)
    return row


@router.patch(
    "/{webhook_id}", response_model=Webhook, responses=errors(404, 409, 412), summary="Update a webhook endpoint"
)
async def update_webhook(
    webhook_id: IdPath,
    body: WebhookUpdate,
    principal: Admin,
    ctx: Ctx,
    response: Response,
    if_match: IfMatch = None,
) -> Webhook:
    row = await webhooks.update_webhook(ctx, principal, webhook_id, body, expected_version(if_match, body.version))
    set_etag(response, row.version)
    return row


@router.post(
    "/{webhook_id}/rotate-secret",
    response_model=WebhookWithSecret,
    responses=errors(404),
    summary="Replace the signing secret",
)
async def rotate_webhook_secret(webhook_id: IdPath, principal: Admin, ctx: Ctx) -> WebhookWithSecret:
    return await webhooks.rotate_secret(ctx, principal, webhook_id)


@router.delete("/{webhook_id}", status_code=204, responses=errors(404), summary="Delete a webhook endpoint")
async def delete_webhook(webhook_id: IdPath, principal: Admin, ctx: Ctx) -> Response:
    await webhooks.delete_webhook(ctx, principal, webhook_id)
    return Response(status_code=204)


@router.get(
    "/{webhook_id}/deliveries",
    response_model=Page[WebhookDelivery],
    responses=errors(404),
    summary="List an endpoint's deliveries, newest first, with their latest attempts",
)
async def list_deliveries(
    webhook_id: IdPath,
    principal: Admin,
    ctx: Ctx,
    paging: Paging,
    status: Annotated[Literal["pending", "delivered", "failed"] | None, Query(description="Only this status")] = None,
    event: Annotated[WebhookEvent | None, Query(description="Only this event type")] = None,
) -> Listing[WebhookDelivery]:
    return await webhooks.list_deliveries(ctx, principal, webhook_id, paging, status=status, event_type=event)


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/redeliver",
    status_code=202,
    response_model=WebhookDelivery,
    responses=errors(404, 409),
    summary="Send a delivered or failed message again",
    description="A new round of attempts on the retry schedule, with the same message id (webhook-id). Refused "
    "while the delivery is still pending or the endpoint is disabled.",
)
async def redeliver(webhook_id: IdPath, delivery_id: IdPath, principal: Admin, ctx: Ctx) -> WebhookDelivery:
    return await webhooks.redeliver(ctx, principal, webhook_id, delivery_id)
