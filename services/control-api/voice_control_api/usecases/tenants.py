"""Tenants. A platform admin creates them and sees them all; a tenant's own users read it, its admins rename it."""

from __future__ import annotations

from ..context import AppContext
from ..models import Tenant, TenantCreate, TenantCreated, TenantUpdate
from ..principal import Principal
from ..security import generate_api_key, new_id
from ..store import api_keys as key_store
from ..store import tenants as store
from . import audit_log
from .common import ExpectedVersion, Listing, Pagination, connection, fetch_page, found, transaction
from .errors import Forbidden, NotFound


def _check_visible(principal: Principal, tenant_id: str) -> None:
    if not (principal.platform_admin or principal.tenant_id == tenant_id):
        raise NotFound("tenant")


async def create_tenant(ctx: AppContext, principal: Principal, body: TenantCreate) -> TenantCreated:
    """The tenant, with the secret of its first admin API key (returned once)."""
    tenant_id = new_id()
    key = generate_api_key()
    async with transaction(ctx) as conn:
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
        await audit_log.record(conn, principal, "tenant.create", "tenant", tenant_id, tenant_id=tenant_id)
        await audit_log.record(conn, principal, "api_key.create", "api_key", row.id, tenant_id=tenant_id, role="admin")
    return TenantCreated(**tenant.model_dump(), admin_api_key=key.key, admin_api_key_id=row.id)


async def list_tenants(
    ctx: AppContext, principal: Principal, paging: Pagination, *, name: str | None
) -> Listing[Tenant]:
    only = None if principal.platform_admin else principal.tenant_id
    return await fetch_page(ctx, paging, store.list_, only_id=only, name=name)


async def get_tenant(ctx: AppContext, principal: Principal, tenant_id: str) -> Tenant:
    _check_visible(principal, tenant_id)
    async with connection(ctx) as conn:
        return found(await store.get(conn, tenant_id), "tenant")


async def update_tenant(
    ctx: AppContext, principal: Principal, tenant_id: str, body: TenantUpdate, expected: ExpectedVersion
) -> Tenant:
    _check_visible(principal, tenant_id)
    if not (principal.platform_admin or principal.is_admin):
        raise Forbidden("admin role required")
    async with transaction(ctx) as conn:
        tenant = found(await store.get(conn, tenant_id, for_update=True), "tenant")
        expected.check(tenant.version)
        if body.name is not None:
            tenant = await store.rename(conn, tenant_id, body.name)
            await audit_log.record(
                conn,
                principal,
                "tenant.update",
                "tenant",
                tenant_id,
                tenant_id=tenant_id,
                fields=["name"],
                version=tenant.version,
            )
    return tenant
