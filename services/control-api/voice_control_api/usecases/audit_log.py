"""The audit log: who changed what, when. Entries are written in the transaction of the change they record.

Details name the fields that changed and the resulting version, never their values (prompts and
numbers stay out of the log).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from ..context import AppContext, request_id_var
from ..models import AuditEntry
from ..principal import Principal
from ..store import audit as store
from .common import Listing, Pagination, fetch_page


async def record(
    conn: asyncpg.Connection,
    actor: Principal | None,
    action: str,
    resource_type: str,
    resource_id: str | None,
    *,
    tenant_id: str | None = None,
    **details: Any,
) -> None:
    """Append an entry; ``actor`` None is the system (start-up chores)."""
    tenant = tenant_id or (actor.tenant_id if actor else None)
    if tenant is None:
        raise ValueError("audit entry needs a tenant")
    await store.append(
        conn,
        tenant_id=tenant,
        actor_type=actor.actor_type if actor else "system",
        actor_id=actor.actor_id if actor else None,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        request_id=request_id_var.get(),
        details=details,
    )


async def list_entries(
    ctx: AppContext,
    principal: Principal,
    paging: Pagination,
    *,
    resource_type: str | None,
    resource_id: str | None,
    action: str | None,
    actor_id: str | None,
    since: datetime | None,
    until: datetime | None,
) -> Listing[AuditEntry]:
    return await fetch_page(
        ctx,
        paging,
        store.list_,
        principal.tenant_id,
        resource_type=resource_type,
        resource_id=resource_id,
        action=action,
        actor_id=actor_id,
        since=since,
        until=until,
    )
