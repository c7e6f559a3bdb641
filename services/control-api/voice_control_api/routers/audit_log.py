"""The audit log, read by admins."""

from __future__ import annotations

from fastapi import APIRouter

from ..deps import AUTHED, Admin, Ctx, Paging, QueryText, QueryTime
from ..models import AuditEntry, Page
from ..usecases import audit_log
from ..usecases.common import Listing

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
) -> Listing[AuditEntry]:
    return await audit_log.list_entries(
        ctx,
        principal,
        paging,
        resource_type=resource_type,
        resource_id=resource_id,
        action=action,
        actor_id=actor_id,
        since=since,
        until=until,
    )
