"""Tenants. Creating one needs the platform-admin scope; a tenant's own users can read (admins rename) it."""

from __future__ import annotations

from fastapi import APIRouter, Response

from ..deps import AUTHED, Auth, Ctx, Paging, PlatformAdmin, QueryText, errors
from ..models import Page, Tenant, TenantCreate, TenantCreated, TenantUpdate
from ..rest import IdPath, IfMatch, expected_version, set_etag
from ..usecases import tenants
from ..usecases.common import Listing

router = APIRouter(prefix="/v1/tenants", tags=["tenants"], responses=AUTHED)


@router.post(
    "",
    status_code=201,
    response_model=TenantCreated,
    summary="Create a tenant (platform admin)",
    description="Returns the tenant and, once, its first admin API key (`admin_api_key`).",
)
async def create_tenant(body: TenantCreate, principal: PlatformAdmin, ctx: Ctx, response: Response) -> TenantCreated:
    created = await tenants.create_tenant(ctx, principal, body)
    response.headers["Location"] = f"/v1/tenants/{created.id}"
    set_etag(response, created.version)
    return created


@router.get(
    "",
    response_model=Page[Tenant],
    summary="List tenants",
    description="A platform admin sees every tenant; anyone else sees their own.",
)
async def list_tenants(principal: Auth, ctx: Ctx, paging: Paging, name: QueryText = None) -> Listing[Tenant]:
    return await tenants.list_tenants(ctx, principal, paging, name=name)


@router.get("/{tenant_id}", response_model=Tenant, responses=errors(404), summary="Get a tenant")
async def get_tenant(tenant_id: IdPath, principal: Auth, ctx: Ctx, response: Response) -> Tenant:
    tenant = await tenants.get_tenant(ctx, principal, tenant_id)
    set_etag(response, tenant.version)
    return tenant


@router.patch(
    "/{tenant_id}",
    response_model=Tenant,
    responses=errors(404, 409, 412),
    summary="Rename a tenant (its admins, or a platform admin)",
)
async def update_tenant(
    tenant_id: IdPath,
    body: TenantUpdate,
    principal: Auth,
    ctx: Ctx,
    response: Response,
    if_match: IfMatch = None,
) -> Tenant:
    tenant = await tenants.update_tenant(ctx, principal, tenant_id, body, expected_version(if_match, body.version))
    set_etag(response, tenant.version)
    return tenant
