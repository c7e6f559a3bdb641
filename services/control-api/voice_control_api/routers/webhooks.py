"""Webhook endpoints (admins). Deliveries, signed with the endpoint's secret, are made by analytics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from .. import audit
from ..deps import AUTHED, Admin, Ctx, Paging, errors
from ..models import Page, Webhook, WebhookCreate, WebhookEvent, WebhookUpdate, WebhookWithSecret
from ..problems import not_found
from ..rest import IdPath, IfMatch, check_precondition, page, set_etag
from ..security import generate_webhook_secret, new_id
from ..store import webhooks as store

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=AUTHED)


def _events(values: list[str]) -> list[str]:
    return sorted(set(values))


@router.post(
    "",
    status_code=201,
    response_model=WebhookWithSecret,
    summary="Register a webhook endpoint",
    description="The signing secret is returned here and by rotate-secret only.",
)
async def create_webhook(body: WebhookCreate, principal: Admin, ctx: Ctx, response: Response) -> dict[str, Any]:
    webhook_id = new_id()
    async with ctx.pool.acquire() as conn, conn.transaction():
        row = await store.create(
            conn,
            webhook_id=webhook_id,
            tenant_id=principal.tenant_id,
            url=body.url,
            events=_events(body.events),
            secret=body.secret or generate_webhook_secret(),
            description=body.description,
            is_active=body.is_active,
        )
        await audit.record(conn, principal, "webhook.create", "webhook", webhook_id)
    response.headers["Location"] = f"/v1/webhooks/{webhook_id}"
    set_etag(response, row["version"])
    return row


@router.get("", response_model=Page[Webhook], summary="List webhook endpoints")
async def list_webhooks(
    principal: Admin,
    ctx: Ctx,
    paging: Paging,
    is_active: bool | None = None,
    event: Annotated[WebhookEvent | None, Query(description="Endpoints subscribed to this event")] = None,
) -> dict[str, Any]:
    async with ctx.pool.acquire() as conn:
        rows = await store.list_(
            conn,
            principal.tenant_id,
            is_active=is_active,
            event=event,
            limit=paging.limit + 1,
            offset=paging.offset,
        )
    return page(rows, paging)


@router.get("/{webhook_id}", response_model=Webhook, responses=errors(404), summary="Get a webhook endpoint")
async def get_webhook(webhook_id: IdPath, principal: Admin, ctx: Ctx, response: Response) -> dict[str, Any]:
    async with ctx.pool.acquire() as conn:
        row = await store.get(conn, principal.tenant_id, webhook_id)
    if row is None:
        raise not_found("webhook")
    set_etag(response, row["version"])
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
) -> dict[str, Any]:
    changes = body.model_dump(exclude_unset=True, exclude={"version"})
    changes = {k: v for k, v in changes.items() if v is not None or k == "description"}
    if "events" in changes:
        changes["events"] = _events(body.events or [])
    async with ctx.pool.acquire() as conn, conn.transaction():
        row = await store.get(conn, principal.tenant_id, webhook_id, for_update=True)
        if row is None:
            raise not_found("webhook")
        check_precondition(row["version"], if_match, body.version)
        if changes:
            row = await store.update(conn, principal.tenant_id, webhook_id, changes)
            await audit.record(
                conn, principal, "webhook.update", "webhook", webhook_id, fields=sorted(changes), version=row["version"]
            )
    set_etag(response, row["version"])
    return row


@router.post(
    "/{webhook_id}/rotate-secret",
    response_model=WebhookWithSecret,
    responses=errors(404),
    summary="Replace the signing secret",
)
async def rotate_webhook_secret(webhook_id: IdPath, principal: Admin, ctx: Ctx) -> dict[str, Any]:
    async with ctx.pool.acquire() as conn, conn.transaction():
        row = await store.get(conn, principal.tenant_id, webhook_id, for_update=True)
        if row is None:
            raise not_found("webhook")
        row = await store.update(conn, principal.tenant_id, webhook_id, {"secret": generate_webhook_secret()})
        await audit.record(conn, principal, "webhook.rotate_secret", "webhook", webhook_id, version=row["version"])
    return row


@router.delete("/{webhook_id}", status_code=204, responses=errors(404), summary="Delete a webhook endpoint")
async def delete_webhook(webhook_id: IdPath, principal: Admin, ctx: Ctx) -> Response:
    async with ctx.pool.acquire() as conn, conn.transaction():
        row = await store.get(conn, principal.tenant_id, webhook_id, for_update=True)
        if row is None:
            raise not_found("webhook")
        await store.delete(conn, principal.tenant_id, webhook_id)
        await audit.record(conn, principal, "webhook.delete", "webhook", webhook_id)
    return Response(status_code=204)
