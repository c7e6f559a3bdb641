"""Phone numbers (E.164, unique across the platform) routed to agents; each route is mirrored to KV.

Admins manage numbers; a supervisor reads the numbers routed to the agents they own.
"""

from __future__ import annotations

import asyncpg

from ..context import AppContext
from ..fields import normalize_e164
from ..models import PhoneNumber, PhoneNumberCreate, PhoneNumberUpdate
from ..principal import Principal
from ..security import new_id
from ..store import agents as agent_store
from ..store import numbers as store
from . import audit_log, dataplane
from .common import ExpectedVersion, Listing, Pagination, connection, fetch_page, found, transaction
from .errors import Conflict, InvalidField

_TAKEN = "this number is already registered"


async def _lock_agent(conn: asyncpg.Connection, tenant_id: str, agent_id: str) -> None:
    """The target agent must be live in this tenant, and stays so until the commit."""
    if not await agent_store.lock_live(conn, tenant_id, agent_id):
        raise InvalidField("agent_id", "no such agent in this tenant")


async def _locked(conn: asyncpg.Connection, principal: Principal, number_id: str) -> PhoneNumber:
    return found(await store.get(conn, principal.tenant_id, number_id, for_update=True), "phone number")


async def create_number(ctx: AppContext, principal: Principal, body: PhoneNumberCreate) -> PhoneNumber:
    number_id = new_id()
    async with transaction(ctx) as conn:
        await _lock_agent(conn, principal.tenant_id, body.agent_id)
        try:
            row = await store.create(
                conn, number_id=number_id, tenant_id=principal.tenant_id, number=body.number, agent_id=body.agent_id
            )
        except asyncpg.UniqueViolationError:
            raise Conflict(_TAKEN) from None
        await audit_log.record(
            conn, principal, "phone_number.create", "phone_number", number_id, agent_id=body.agent_id
        )
    await dataplane.publish_number(ctx, row)
    return row


async def list_numbers(
    ctx: AppContext, principal: Principal, paging: Pagination, *, agent_id: str | None, number: str | None
) -> Listing[PhoneNumber]:
    if number is not None:
        try:
            number = normalize_e164(number)
        except ValueError:
            return paging.page([])  # not a phone number: no number is stored so
    return await fetch_page(
        ctx, paging, store.list_, principal.tenant_id, owner=principal.owner_filter, agent_id=agent_id, number=number
    )


async def get_number(ctx: AppContext, principal: Principal, number_id: str) -> PhoneNumber:
    async with connection(ctx) as conn:
        return found(
            await store.get(conn, principal.tenant_id, number_id, owner=principal.owner_filter), "phone number"
        )


async def update_number(
    ctx: AppContext, principal: Principal, number_id: str, body: PhoneNumberUpdate, expected: ExpectedVersion
) -> PhoneNumber:
    """Change the number, or route it to another agent."""
    async with transaction(ctx) as conn:
        current = await _locked(conn, principal, number_id)
        expected.check(current.version)
        number = body.number or current.number
        agent_id = body.agent_id or current.agent_id
        if agent_id != current.agent_id:
            await _lock_agent(conn, principal.tenant_id, agent_id)
        try:
            row = await store.update(conn, principal.tenant_id, number_id, number=number, agent_id=agent_id)
        except asyncpg.UniqueViolationError:
            raise Conflict(_TAKEN) from None
        changed = [f for f in ("number", "agent_id") if getattr(row, f) != getattr(current, f)]
        await audit_log.record(
            conn,
            principal,
            "phone_number.update",
            "phone_number",
            number_id,
            fields=changed,
            agent_id=agent_id,
            version=row.version,
        )
    await dataplane.publish_number(ctx, row, old_number=current.number)
    return row


async def delete_number(ctx: AppContext, principal: Principal, number_id: str, expected: ExpectedVersion) -> None:
    """Release the number; its route leaves KV."""
    async with transaction(ctx) as conn:
        current = await _locked(conn, principal, number_id)
        expected.check(current.version)
        await store.delete(conn, principal.tenant_id, number_id)
        await audit_log.record(conn, principal, "phone_number.delete", "phone_number", number_id)
    await dataplane.retract_number(ctx, current)
