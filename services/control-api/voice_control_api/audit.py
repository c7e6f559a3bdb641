"""The audit log: who changed what, when. Written in the same transaction as the change it records.

Details name the fields that changed and the resulting version, never their values (prompts and
numbers stay out of the log).
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from .auth import Principal
from .context import request_id_var


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
    tenant = tenant_id or (actor.tenant_id if actor else None)
    if tenant is None:
        raise ValueError("audit entry needs a tenant")
    await conn.execute(
        """
        INSERT INTO audit_log (tenant_id, actor_type, actor_id, action, resource_type, resource_id,
                               request_id, details)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)
        """,
        tenant,
        actor.actor_type if actor else "system",
        actor.actor_id if actor else None,
        action,
        resource_type,
        resource_id,
        request_id_var.get(),
        json.dumps(details, default=str),
    )
