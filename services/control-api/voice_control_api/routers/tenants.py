"""Tenants. Creating one needs the platform-admin scope; a tenant's own users can read (admins rename) it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from .. import audit
from ..deps import AUTHED, Auth, Ctx, Paging, PlatformAdmin, QueryText, errors
from ..models import Page, Tenant, TenantCreate, TenantCreated, TenantUpdate
from ..problems import forbidden, not_found
from ..rest import IdPath, IfMatch, check_precondition, page, set_etag
from ..security import generate_api_key, new_id
from ..store import api_keys as key_store
from ..store import tenants as store

router = APIRouter(prefix="/v1/tenants", tags=["tenants"], responses=AUTHED)


@router.post(
    "",
    status_code=201,
    response_model=TenantCreated,
    summary="Create a tenant (platform admin)",
    description="Returns the tenant and, once, its first admin API key (`admin_api_key`).",
)
async def create_tenant(body: TenantCreate, principal: PlatformAdmin, ctx: Ctx, response: Response) -> dict[str, Any]:
    tenant_id = new_id()
    key = generate_api_key()
    async with ctx.pool.acquire() as conn, conn.transaction():
        tenant = await store.create(conn, tenant_id, body.name)
        row = await key_store.create(
            conn,
            key_id=new_id(),
            tenant_id=tenant_id,
            name="initial admin key",
            prefix=key.prefix,
            key_hash=key.key_hash,
            role="admin",
            source="tenant",
            created_by=principal.actor,
        )
        await audit.record(conn, principal, "tenant.create", "tenant", tenant_id, tenant_id=tenant_id)
        await audit.record(conn, principal, "api_key.create", "api_key", row["id"], tenant_id=tenant_id, role="admin")
    response.headers["Location"] = f"/v1/tenants/{tenant_id}"
    set_etag(response, tenant["version"])
    return {**tenant, "admin_api_key": key.key, "admin_api_key_id": row["id"]}


@router.get(
    "",
    response_model=Page[Tenant],
    summary="List tenants",
    description="A platform admin sees every tenant; anyone else sees their own.",
)
async def list_tenants(principal: Auth, ctx: Ctx, paging: Paging, name: QueryText = None) -> dict[str, Any]:
    only = None if principal.platform_admin else principal.tenant_id
    async with ctx.pool.acquire() as conn:
        rows = await store.list_(conn, only_id=only, name=name, limit=paging.limit + 1, offset=paging.offset)
    return page(rows, paging)


def _visible(principal: Any, tenant_id: str) -> bool:
    return bool(principal.platform_admin or principal.tenant_id == tenant_id)


@router.get("/{tenant_id}", response_model=Tenant, responses=errors(404), summary="Get a tenant")
async def get_tenant(tenant_id: IdPath, principal: Auth, ctx: Ctx, response: Response) -> dict[str, Any]:
    if not _visible(principal, tenant_id):
        raise not_found("tenant")
    async with ctx.pool.acquire() as conn:
        tenant = await store.get(conn, tenant_id)
    if tenant is None:
        raise not_found("tenant")
    set_etag(response, tenant["version"])
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
) -> dict[str, Any]:
    if not _visible(principal, tenant_id):
        raise not_found("tenant")
    if not (principal.platform_admin or principal.is_admin):
        raise forbidden("admin role required")
    async with ctx.pool.acquire() as conn, conn.transaction():
        tenant = await store.get(conn, tenant_id, for_update=True)
        if tenant is None:
            raise not_found("tenant")
        check_precondition(tenant["version"], if_match, body.version)
        if body.name is not None:
            tenant = await store.rename(conn, tenant_id, body.name)
            await audit.record(
                conn,
                principal,
                "tenant.update",
                "tenant",
                tenant_id,
                tenant_id=tenant_id,
                fields=["name"],
                version=tenant["version"],
            )
    set_etag(response, tenant["version"])
    return tenant
