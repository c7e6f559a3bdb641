"""Webhook endpoints of a tenant, managed by its admins, and their delivery log. Analytics makes the deliveries
(Standard Webhooks, from the ``webhook_deliveries`` outbox), signed with the endpoint's secret, which only create
and rotate return: it is stored sealed (SecretBox under SECRETS_KEY, name ``webhook-<id>``, the name analytics
opens it with), so without SECRETS_KEY creating an endpoint or rotating its secret is refused."""

from __future__ import annotations

import asyncio

import asyncpg
from voice_runtime.egress import BlockedAddress, check_url
from voice_runtime.secretbox import SecretBox

from ..context import AppContext
from ..models import Webhook, WebhookCreate, WebhookDelivery, WebhookUpdate, WebhookWithSecret
from ..principal import Principal
from ..security import generate_webhook_secret, new_id
from ..store import webhooks as store
from . import audit_log
from .common import ExpectedVersion, Listing, Pagination, connection, fetch_page, found, transaction
from .errors import Conflict, InvalidField, NotConfigured

URL_CHECK_TIMEOUT_S = 3.0


def secret_name(webhook_id: str) -> str:
    """The SecretBox name of an endpoint's secret (voice_analytics.webhooks.secret_name opens it)."""
    return f"webhook-{webhook_id}"


def _box(ctx: AppContext) -> SecretBox:
    if ctx.secret_box is None:
        raise NotConfigured("webhook secrets are sealed and this deployment has no SECRETS_KEY")
    return ctx.secret_box


def _events(values: list[str]) -> list[str]:
    return sorted(set(values))


async def _check_url(ctx: AppContext, url: str) -> None:
    """An early error for a URL that reaches an internal address now; analytics checks again on every connection."""
    try:
        async with asyncio.timeout(URL_CHECK_TIMEOUT_S):
            await check_url(url, ctx.egress)
    except BlockedAddress:
        # the resolved address is not named: it would tell a tenant what internal names resolve to
        raise InvalidField(
            "url", "reaches an internal address; an operator must allow-list its host:port (EGRESS_ALLOW)"
        ) from None
    except TimeoutError:
        pass


async def _locked(conn: asyncpg.Connection, principal: Principal, webhook_id: str) -> Webhook:
    return found(await store.get(conn, principal.tenant_id, webhook_id, for_update=True), "webhook")


async def create_webhook(ctx: AppContext, principal: Principal, body: WebhookCreate) -> WebhookWithSecret:
    """With ``secret`` unset, one is generated."""
    box = _box(ctx)
    await _check_url(ctx, str(body.url))
    webhook_id = new_id()
    secret = body.secret or generate_webhook_secret()
    async with transaction(ctx) as conn:
        row = await store.create(
            conn,
            webhook_id=webhook_id,
            tenant_id=principal.tenant_id,
            url=str(body.url),
            events=_events(body.events),
            secret_sealed=box.seal(principal.tenant_id, secret_name(webhook_id), secret),
            description=body.description,
            is_active=body.is_active,
        )
        await audit_log.record(conn, principal, "webhook.create", "webhook", webhook_id)
    return WebhookWithSecret(**row.model_dump(), secret=secret)


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
    if "url" in changes:
        changes["url"] = str(body.url)
        await _check_url(ctx, changes["url"])
    if changes.get("is_active"):
        changes["disabled_reason"] = None  # re-enabled by an admin
    async with transaction(ctx) as conn:
        row = await _locked(conn, principal, webhook_id)
        expected.check(row.version)
        if changes:
            row = await store.update(conn, principal.tenant_id, webhook_id, changes)
            await audit_log.record(
                conn, principal, "webhook.update", "webhook", webhook_id, fields=sorted(changes), version=row.version
            )
    return row


async def rotate_secret(ctx: AppContext, principal: Principal, webhook_id: str) -> WebhookWithSecret:
    box = _box(ctx)
    secret = generate_webhook_secret()
    async with transaction(ctx) as conn:
        await _locked(conn, principal, webhook_id)
        row = await store.update(
            conn,
            principal.tenant_id,
            webhook_id,
            {"secret_sealed": box.seal(principal.tenant_id, secret_name(webhook_id), secret)},
        )
        await audit_log.record(conn, principal, "webhook.rotate_secret", "webhook", webhook_id, version=row.version)
    return WebhookWithSecret(**row.model_dump(), secret=secret)


async def delete_webhook(ctx: AppContext, principal: Principal, webhook_id: str) -> None:
    async with transaction(ctx) as conn:
        await _locked(conn, principal, webhook_id)
        await store.delete(conn, principal.tenant_id, webhook_id)
        await audit_log.record(conn, principal, "webhook.delete", "webhook", webhook_id)


# ------------------------------------------------------------------ delivery log
async def list_deliveries(
    ctx: AppContext,
    principal: Principal,
    webhook_id: str,
    paging: Pagination,
    *,
    status: str | None,
    event_type: str | None,
) -> Listing[WebhookDelivery]:
    async with connection(ctx) as conn:
        found(await store.get(conn, principal.tenant_id, webhook_id), "webhook")
        rows = await store.list_deliveries(
            conn,
            principal.tenant_id,
            webhook_id,
            status=status,
            event_type=event_type,
            limit=paging.fetch,
            offset=paging.offset,
        )
    return paging.page(rows)


async def redeliver(ctx: AppContext, principal: Principal, webhook_id: str, delivery_id: str) -> WebhookDelivery:
    """A new round of attempts (the spec's schedule from the start), same message id; refused while attempts are
    still pending or the endpoint is disabled."""
    async with transaction(ctx) as conn:
        hook = await _locked(conn, principal, webhook_id)
        delivery = found(
            await store.get_delivery(conn, principal.tenant_id, webhook_id, delivery_id, for_update=True), "delivery"
        )
        if not hook.is_active:
            raise Conflict("the webhook is disabled; enable it (PATCH is_active) first")
        if delivery.status == "pending":
            raise Conflict("this delivery is still being attempted")
        await store.redeliver(conn, principal.tenant_id, delivery_id)
        await audit_log.record(conn, principal, "webhook.redeliver", "webhook", webhook_id, delivery=delivery_id)
        return found(await store.get_delivery(conn, principal.tenant_id, webhook_id, delivery_id), "delivery")
