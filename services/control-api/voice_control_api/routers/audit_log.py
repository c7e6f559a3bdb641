"""The audit log, read by admins."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ..deps import AUTHED, Admin, Ctx, Paging, QueryText, QueryTime
from ..models import AuditEntry, Page
from ..rest import page
from ..store import audit as store

router = APIRouter(prefix="/v1/audit-log", tags=["audit-log"], responses=AUTHED)


@router.get(
    "",
    response_model=Page[AuditEntry],
    summary="Read the audit log (newest first)",
    description="Every configuration change: who (`actor_type`, `actor_id`), what (`action`, `resource_type`, "
    "`resource_id`, the changed field names in `details`) and when (`at`).",
)
async def list_audit_log(
    principal: Admin,
    ctx: Ctx,
    paging: Paging,
    resource_type: QueryText = None,
    resource_id: QueryText = None,
    action: QueryText = None,
    actor_id: QueryText = None,
    since: QueryTime = None,
    until: QueryTime = None,
) -> dict[str, Any]:
    async with ctx.pool.acquire() as conn:
        rows = await store.list_(
            conn,
            principal.tenant_id,
            resource_type=resource_type,
            resource_id=resource_id,
            action=action,
            actor_id=actor_id,
            since=since,
            until=until,
            limit=paging.limit + 1,
            offset=paging.offset,
        )
    return page(rows, paging)
