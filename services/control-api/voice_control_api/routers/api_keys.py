"""API keys of a tenant (admins manage them). The secret is shown once, at creation."""

from __future__ import annotations

from fastapi import APIRouter, Response

from ..deps import AUTHED, Admin, Ctx, Paging, errors
from ..models import ApiKey, ApiKeyCreate, ApiKeyCreated, Page
from ..rest import IdPath
from ..security import Role
from ..usecases import api_keys
from ..usecases.common import Listing

router = APIRouter(prefix="/v1/api-keys", tags=["api-keys"], responses=AUTHED)


@router.post(
    "",
    status_code=201,
    response_model=ApiKeyCreated,
    summary="Create an API key",
    description="The response holds the key (`key`) once; only its prefix is shown afterwards. A supervisor "
    "key acts as the supervisor user named by `user_id`.",
)
async def create_api_key(body: ApiKeyCreate, principal: Admin, ctx: Ctx, response: Response) -> ApiKeyCreated:
    created = await api_keys.create_api_key(ctx, principal, body)
    response.headers["Location"] = f"/v1/api-keys/{created.id}"
    return created


@router.get("", response_model=Page[ApiKey], summary="List API keys")
async def list_api_keys(
    principal: Admin, ctx: Ctx, paging: Paging, include_revoked: bool = False, role: Role | None = None
) -> Listing[ApiKey]:
    return await api_keys.list_api_keys(ctx, principal, paging, include_revoked=include_revoked, role=role)


@router.get("/{key_id}", response_model=ApiKey, responses=errors(404), summary="Get an API key")
async def get_api_key(key_id: IdPath, principal: Admin, ctx: Ctx) -> ApiKey:
    return await api_keys.get_api_key(ctx, principal, key_id)


@router.delete(
    "/{key_id}",
    status_code=204,
    responses=errors(404),
    summary="Revoke an API key",
    description="Takes effect on the next request, on every replica. Revoking twice is harmless.",
)
async def revoke_api_key(key_id: IdPath, principal: Admin, ctx: Ctx) -> Response:
    await api_keys.revoke_api_key(ctx, principal, key_id)
    return Response(status_code=204)
