"""Webhook endpoints of a tenant, managed by its admins. Analytics makes the deliveries, signed with the
endpoint's secret, which only create and rotate return."""

from __future__ import annotations

import asyncpg

from ..context import AppContext
from ..models import Webhook, WebhookCreate, WebhookUpdate, WebhookWithSecret
from ..principal import Principal
from ..security import generate_webhook_secret, new_id
from ..store import webhooks as store
from . import audit_log
from .common import ExpectedVersion, Listing, Pagination, connection, fetch_page, found, transaction


def _events(values: list[str]) -> list[str]:
    return sorted(set(values))


async def _locked(conn: asyncpg.Connection, principal: Principal, webhook_id: str) -> Webhook:
    return found(await store.get(conn, principal.tenant_id, webhook_id, for_update=True), "webhook")


async def create_webhook(ctx: AppContext, principal: Principal, body: WebhookCreate) -> WebhookWithSecret:
    """With ``secret`` unset, one is generated."""
    webhook_id = new_id()
    async with transaction(ctx) as conn:
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
        await audit_log.record(conn, principal, "webhook.create", "webhook", webhook_id)
    return row


async def list_webhooks(
    ctx: AppContext, principal: Principal, paging: Pagination, *, is_active: bool | None, event: str | None
) -> Listing[Webhook]:
    return await fetch_page(ctx, paging, store.list_, principal.tenant_id, is_active=is_active, event=event)


async def get_webhook(ctx: AppContext, principal: Principal, webhook_id: str) -> Webhook:
    async with connection(ctx) as conn:
        return found(await store.get(conn, principal.tenant_id, webhook_id), "webhook")


async def update_webhook(
    ctx: AppContext, principal: Principal, webhook_id: str, body: WebhookUpdate, expected: ExpectedVersion
) -> Webhook:
    changes = body.model_dump(exclude_unset=True, exclude={"version"})
    changes = {k: v for k, v in changes.items() if v is not None or k == "description"}
    if "events" in changes:
        changes["events"] = _events(body.events or [])
    async with transaction(ctx) as conn:
        row = await _locked(conn, principal, webhook_id)
        expected.check(row.version)
        if changes:
            updated = await store.update(conn, principal.tenant_id, webhook_id, changes)
            row = Webhook.model_validate(updated.model_dump(exclude={"secret"}))
            await audit_log.record(
                conn, principal, "webhook.update", "webhook", webhook_id, fields=sorted(changes), version=row.version
            )
    return row


async def rotate_secret(ctx: AppContext, principal: Principal, webhook_id: str) -> WebhookWithSecret:
    async with transaction(ctx) as conn:
        await _locked(conn, principal, webhook_id)
        row = await store.update(conn, principal.tenant_id, webhook_id, {"secret": generate_webhook_secret()})
        await audit_log.record(conn, principal, "webhook.rotate_secret", "webhook", webhook_id, version=row.version)
    return row


async def delete_webhook(ctx: AppContext, principal: Principal, webhook_id: str) -> None:
    async with transaction(ctx) as conn:
        await _locked(conn, principal, webhook_id)
        await store.delete(conn, principal.tenant_id, webhook_id)
        await audit_log.record(conn, principal, "webhook.delete", "webhook", webhook_id)
