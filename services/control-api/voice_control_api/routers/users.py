"""Users of a tenant (admins manage them): console logins with a role."""

from __future__ import annotations

from fastapi import APIRouter, Response

from ..deps import AUTHED, Admin, Ctx, Paging, QueryText, errors
from ..models import Page, User, UserCreate, UserUpdate
from ..rest import IdPath, IfMatch, expected_version, set_etag
from ..security import Role
from ..usecases import users
from ..usecases.common import Listing

router = APIRouter(prefix="/v1/users", tags=["users"], responses=AUTHED)


@router.post("", status_code=201, response_model=User, responses=errors(409), summary="Create a user")
async def create_user(body: UserCreate, principal: Admin, ctx: Ctx, response: Response) -> User:
    user = await users.create_user(ctx, principal, body)
    response.headers["Location"] = f"/v1/users/{user.id}"
    set_etag(response, user.version)
    return user


@router.get("", response_model=Page[User], summary="List users")
async def list_users(
    principal: Admin,
    ctx: Ctx,
    paging: Paging,
    role: Role | None = None,
    is_active: bool | None = None,
    email: QueryText = None,
) -> Listing[User]:
    return await users.list_users(ctx, principal, paging, role=role, is_active=is_active, email=email)


@router.get("/{user_id}", response_model=User, responses=errors(404), summary="Get a user")
async def get_user(user_id: IdPath, principal: Admin, ctx: Ctx, response: Response) -> User:
    user = await users.get_user(ctx, principal, user_id)
    set_etag(response, user.version)
    return user


@router.patch(
    "/{user_id}",
    response_model=User,
    responses=errors(404, 409, 412),
    summary="Update a user (name, role, active, password)",
    description="Deactivating a user or setting their password revokes their refresh tokens; their API keys "
    "stop working while they are inactive.",
)
async def update_user(
    user_id: IdPath,
    body: UserUpdate,
    principal: Admin,
    ctx: Ctx,
    response: Response,
    if_match: IfMatch = None,
) -> User:
    user = await users.update_user(ctx, principal, user_id, body, expected_version(if_match, body.version))
    set_etag(response, user.version)
    return user


@router.delete(
    "/{user_id}",
    status_code=204,
    responses=errors(404, 409),
    summary="Delete a user",
    description="Their API keys are revoked; agents they owned become admin-owned.",
)
async def delete_user(user_id: IdPath, principal: Admin, ctx: Ctx) -> Response:
    await users.delete_user(ctx, principal, user_id)
    return Response(status_code=204)
