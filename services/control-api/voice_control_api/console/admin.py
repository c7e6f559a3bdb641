"""Tenant administration in the console: phone numbers, users and roles, API keys, webhooks, and tenants (platform
admins). Each page needs the role its API needs (``SignedAdmin`` where the API's router says ``Admin``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import ValidationError

from ..models import (
    WEBHOOK_EVENTS,
    ApiKeyCreate,
    PhoneNumberCreate,
    PhoneNumberUpdate,
    TenantCreate,
    UserCreate,
    UserUpdate,
    WebhookCreate,
    WebhookUpdate,
)
from ..rest import IdPath
from ..usecases import api_keys, phone_numbers, tenants, users, webhooks
from ..usecases.common import ExpectedVersion, Pagination
from ..usecases.errors import UseCaseError
from .web import (
    ConsoleRoute,
    Ctx,
    Signed,
    SignedAdmin,
    SignedPlatformAdmin,
    Viewer,
    agent_names,
    forget_revealed,
    form_fields,
    form_list,
    page,
    problems_of,
    reveal_once,
    revealed_secret,
    see_other,
    status_of,
)

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)
PAGE = 50
Offset = Query(0, ge=0, le=1_000_000)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _blank_none(form: dict[str, str], *names: str) -> dict[str, Any]:
    return {n: (form.get(n, "").strip() or None) for n in names}


def _revealing(request: Request, ctx: Ctx, template: str, viewer: Viewer, **values: Any) -> Response:
    """A page that shows, once, a secret a form of it made (see ``reveal_once``)."""
    revealed = revealed_secret(request)
    response = page(request, template, viewer, revealed=revealed, **values)
    if revealed is not None:
        forget_revealed(response, ctx, request)
    return response


# ------------------------------------------------------------------ phone numbers
async def _numbers_page(
    request: Request, ctx: Ctx, viewer: Viewer, offset: int, *, errors: list[str] | None = None, status: int = 200
) -> Response:
    listing = await phone_numbers.list_numbers(
        ctx, viewer.principal, Pagination(limit=PAGE, offset=offset), agent_id=None, number=None
    )
    return page(
        request,
        "numbers.html",
        viewer,
        status=status,
        listing=listing,
        agent_names=await agent_names(ctx, viewer),
        errors=errors or [],
    )


@router.get("/numbers")
async def numbers_page(request: Request, ctx: Ctx, viewer: Signed, offset: int = Offset) -> Response:
    return await _numbers_page(request, ctx, viewer, offset)


@router.post("/numbers")
async def add_number(request: Request, ctx: Ctx, viewer: SignedAdmin) -> Response:
    form = await form_fields(request)
    try:
        body = PhoneNumberCreate(number=form.get("number", ""), agent_id=form.get("agent_id", ""))
        await phone_numbers.create_number(ctx, viewer.principal, body)
    except (ValidationError, UseCaseError) as e:
        return await _numbers_page(request, ctx, viewer, 0, errors=problems_of(e), status=status_of(e))
    return see_other("/numbers", "number-added")


@router.post("/numbers/{number_id}")
async def bind_number(number_id: IdPath, request: Request, ctx: Ctx, viewer: SignedAdmin) -> Response:
    form = await form_fields(request)
    try:
        body = PhoneNumberUpdate(agent_id=form.get("agent_id") or None, version=_int(form.get("version")))
        await phone_numbers.update_number(ctx, viewer.principal, number_id, body, ExpectedVersion(version=body.version))
    except (ValidationError, UseCaseError) as e:
        return await _numbers_page(request, ctx, viewer, 0, errors=problems_of(e), status=status_of(e))
    return see_other("/numbers", "number-saved")


@router.post("/numbers/{number_id}/delete")
async def delete_number(number_id: IdPath, request: Request, ctx: Ctx, viewer: SignedAdmin) -> Response:
    await phone_numbers.delete_number(ctx, viewer.principal, number_id, ExpectedVersion())
    return see_other("/numbers", "number-deleted")


# ------------------------------------------------------------------ users
async def _users_page(
    request: Request, ctx: Ctx, viewer: Viewer, offset: int, *, errors: list[str] | None = None, status: int = 200
) -> Response:
    listing = await users.list_users(
        ctx, viewer.principal, Pagination(limit=PAGE, offset=offset), role=None, is_active=None, email=None
    )
    return page(request, "users.html", viewer, status=status, listing=listing, errors=errors or [])


@router.get("/users")
async def users_page(request: Request, ctx: Ctx, viewer: SignedAdmin, offset: int = Offset) -> Response:
    return await _users_page(request, ctx, viewer, offset)


@router.post("/users")
async def create_user(request: Request, ctx: Ctx, viewer: SignedAdmin) -> Response:
    form = await form_fields(request)
    try:
        body = UserCreate(
            email=form.get("email", ""),
            name=form.get("name", "").strip() or None,
            role=form.get("role", "supervisor"),  # validated by the model
            password=form.get("password", ""),
        )
        await users.create_user(ctx, viewer.principal, body)
    except (ValidationError, UseCaseError) as e:
        return await _users_page(request, ctx, viewer, 0, errors=problems_of(e), status=status_of(e))
    return see_other("/users", "user-created")


@router.post("/users/{user_id}")
async def update_user(user_id: IdPath, request: Request, ctx: Ctx, viewer: SignedAdmin) -> Response:
    form = await form_fields(request)
    try:
        changes: dict[str, Any] = {
            "role": form.get("role") or None,
            "is_active": "is_active" in form,
            "version": _int(form.get("version")),
        }
        if form.get("password"):
            changes["password"] = form["password"]
        body = UserUpdate.model_validate(changes)
        await users.update_user(ctx, viewer.principal, user_id, body, ExpectedVersion(version=body.version))
    except (ValidationError, UseCaseError) as e:
        return await _users_page(request, ctx, viewer, 0, errors=problems_of(e), status=status_of(e))
    return see_other("/users", "user-saved")


@router.post("/users/{user_id}/delete")
async def delete_user(user_id: IdPath, request: Request, ctx: Ctx, viewer: SignedAdmin) -> Response:
    try:
        await users.delete_user(ctx, viewer.principal, user_id)
    except UseCaseError as e:
        return await _users_page(request, ctx, viewer, 0, errors=problems_of(e), status=status_of(e))
    return see_other("/users", "user-deleted")


# ------------------------------------------------------------------ API keys
async def _keys_page(
    request: Request,
    ctx: Ctx,
    viewer: Viewer,
    offset: int = 0,
    *,
    include_revoked: bool = False,
    errors: list[str] | None = None,
    status: int = 200,
) -> Response:
    listing = await api_keys.list_api_keys(
        ctx, viewer.principal, Pagination(limit=PAGE, offset=offset), include_revoked=include_revoked, role=None
    )
    supervisors = await users.list_users(
        ctx, viewer.principal, Pagination(limit=200, offset=0), role="supervisor", is_active=True, email=None
    )
    return _revealing(
        request,
        ctx,
        "api_keys.html",
        viewer,
        status=status,
        listing=listing,
        include_revoked=include_revoked,
        supervisors=supervisors.items,
        errors=errors or [],
    )


@router.get("/api-keys")
async def keys_page(
    request: Request, ctx: Ctx, viewer: SignedAdmin, offset: int = Offset, include_revoked: bool = False
) -> Response:
    return await _keys_page(request, ctx, viewer, offset, include_revoked=include_revoked)


@router.post("/api-keys")
async def create_key(request: Request, ctx: Ctx, viewer: SignedAdmin) -> Response:
    """The new key is shown once, on the page this redirects to."""
    form = await form_fields(request)
    try:
        body = ApiKeyCreate.model_validate(
            {
                "name": form.get("name", ""),
                "role": form.get("role", "admin"),
                "user_id": (form.get("user_id") or None) if form.get("role") == "supervisor" else None,
                "expires_at": form.get("expires_at") or None,
            }
        )
        created = await api_keys.create_api_key(ctx, viewer.principal, body)
    except (ValidationError, UseCaseError) as e:
        return await _keys_page(request, ctx, viewer, errors=problems_of(e), status=status_of(e))
    response = see_other("/api-keys")
    reveal_once(response, ctx, request, "/api-keys", f"New API key “{created.name}”.", created.key)
    return response


@router.post("/api-keys/{key_id}/revoke")
async def revoke_key(key_id: IdPath, request: Request, ctx: Ctx, viewer: SignedAdmin) -> Response:
    await api_keys.revoke_api_key(ctx, viewer.principal, key_id)
    return see_other("/api-keys", "key-revoked")


# ------------------------------------------------------------------ webhooks
async def _webhooks_page(
    request: Request,
    ctx: Ctx,
    viewer: Viewer,
    offset: int = 0,
    *,
    errors: list[str] | None = None,
    status: int = 200,
) -> Response:
    listing = await webhooks.list_webhooks(
        ctx, viewer.principal, Pagination(limit=PAGE, offset=offset), is_active=None, event=None
    )
    return _revealing(
        request,
        ctx,
        "webhooks.html",
        viewer,
        status=status,
        listing=listing,
        events=WEBHOOK_EVENTS,
        errors=errors or [],
    )


@router.get("/webhooks")
async def webhooks_page(request: Request, ctx: Ctx, viewer: SignedAdmin, offset: int = Offset) -> Response:
    return await _webhooks_page(request, ctx, viewer, offset)


@router.post("/webhooks")
async def create_webhook(request: Request, ctx: Ctx, viewer: SignedAdmin) -> Response:
    form = await form_fields(request)
    try:
        body = WebhookCreate.model_validate(
            {
                "url": form.get("url", ""),
                "events": await form_list(request, "events"),
                **_blank_none(form, "description"),
                "is_active": True,
            }
        )
        created = await webhooks.create_webhook(ctx, viewer.principal, body)
    except (ValidationError, UseCaseError) as e:
        return await _webhooks_page(request, ctx, viewer, errors=problems_of(e), status=status_of(e))
    response = see_other("/webhooks", "webhook-saved")
    reveal_once(response, ctx, request, "/webhooks", f"Signing secret of {created.url}.", created.secret)
    return response


@router.post("/webhooks/{webhook_id}")
async def update_webhook(webhook_id: IdPath, request: Request, ctx: Ctx, viewer: SignedAdmin) -> Response:
    form = await form_fields(request)
    try:
        body = WebhookUpdate(is_active="is_active" in form, version=_int(form.get("version")))
        await webhooks.update_webhook(ctx, viewer.principal, webhook_id, body, ExpectedVersion(version=body.version))
    except (ValidationError, UseCaseError) as e:
        return await _webhooks_page(request, ctx, viewer, errors=problems_of(e), status=status_of(e))
    return see_other("/webhooks", "webhook-saved")


@router.post("/webhooks/{webhook_id}/rotate")
async def rotate_webhook(webhook_id: IdPath, request: Request, ctx: Ctx, viewer: SignedAdmin) -> Response:
    rotated = await webhooks.rotate_secret(ctx, viewer.principal, webhook_id)
    response = see_other("/webhooks", "webhook-saved")
    reveal_once(response, ctx, request, "/webhooks", f"New signing secret of {rotated.url}.", rotated.secret)
    return response


@router.post("/webhooks/{webhook_id}/delete")
async def delete_webhook(webhook_id: IdPath, request: Request, ctx: Ctx, viewer: SignedAdmin) -> Response:
    await webhooks.delete_webhook(ctx, viewer.principal, webhook_id)
    return see_other("/webhooks", "webhook-deleted")


# ------------------------------------------------------------------ tenants
async def _tenants_page(
    request: Request,
    ctx: Ctx,
    viewer: Viewer,
    offset: int = 0,
    *,
    errors: list[str] | None = None,
    status: int = 200,
) -> Response:
    listing = await tenants.list_tenants(ctx, viewer.principal, Pagination(limit=PAGE, offset=offset), name=None)
    return _revealing(request, ctx, "tenants.html", viewer, status=status, listing=listing, errors=errors or [])


@router.get("/tenants")
async def tenants_page(request: Request, ctx: Ctx, viewer: SignedPlatformAdmin, offset: int = Offset) -> Response:
    return await _tenants_page(request, ctx, viewer, offset)


@router.post("/tenants")
async def create_tenant(request: Request, ctx: Ctx, viewer: SignedPlatformAdmin) -> Response:
    """The new tenant's first admin key is shown once, on the page this redirects to."""
    form = await form_fields(request)
    try:
        created = await tenants.create_tenant(ctx, viewer.principal, TenantCreate(name=form.get("name", "")))
    except (ValidationError, UseCaseError) as e:
        return await _tenants_page(request, ctx, viewer, errors=problems_of(e), status=status_of(e))
    response = see_other("/tenants")
    label = f"First admin API key of “{created.name}” (tenant {created.id})."
    reveal_once(response, ctx, request, "/tenants", label, created.admin_api_key)
    return response
