"""Tenant secrets (admins): write-only values, listed by name."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from ..deps import AUTHED, Admin, Ctx, Paging, errors
from ..fields import ID_PATTERN
from ..models import Page, SecretPut, TenantSecret
from ..usecases import tenant_secrets
from ..usecases.common import Listing

router = APIRouter(prefix="/v1/secrets", tags=["secrets"], responses={**AUTHED, **errors(503)})

SecretName = Annotated[str, Path(pattern=ID_PATTERN, description="Secret name: [A-Za-z0-9_-], 1-64 characters")]


@router.put(
    "/{name}",
    response_model=TenantSecret,
    responses={201: {"model": TenantSecret, "description": "Created"}},
    summary="Create or replace a secret",
    description="200 when it replaced a secret of that name, 201 when it created one. The value is stored "
    "encrypted and is never returned; agents name it in `llm.api_key_secret`.",
)
async def put_secret(name: SecretName, body: SecretPut, principal: Admin, ctx: Ctx, response: Response) -> TenantSecret:
    secret, created = await tenant_secrets.put_secret(ctx, principal, name, body.value.get_secret_value())
    if created:
        response.status_code = 201
    return secret


@router.get("", response_model=Page[TenantSecret], summary="List secrets (names and times, never values)")
async def list_secrets(principal: Admin, ctx: Ctx, paging: Paging) -> Listing[TenantSecret]:
    return await tenant_secrets.list_secrets(ctx, principal, paging)


@router.delete(
    "/{name}",
    status_code=204,
    responses=errors(404, 409),
    summary="Delete a secret",
    description="Refused (409) while an agent uses it as `llm.api_key_secret`.",
)
async def delete_secret(name: SecretName, principal: Admin, ctx: Ctx) -> Response:
    await tenant_secrets.delete_secret(ctx, principal, name)
    return Response(status_code=204)
