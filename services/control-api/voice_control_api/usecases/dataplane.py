"""The config mirror in JetStream KV (agents, numbers, sealed tenant secrets, SIP trunks): written after each
database commit, and the snapshot a resync compares with.

A KV write that fails is logged and left to the resync the failure requests; it never fails the request,
whose change is already committed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg
from voice_runtime.logging import get_logger, safe_error
from voice_schemas.agent import AgentConfig, NumberRoute

from ..context import AppContext
from ..kvsync import Snapshot
from ..models import Agent, PhoneNumber
from ..models_trunks import SipTrunkOut
from ..store import agents, numbers, tenant_secrets, trunks
from .common import transaction

log = get_logger(__name__)


async def _mirror(ctx: AppContext, write: Callable[[], Awaitable[object]], event: str, **ids: str) -> None:
    try:
        await write()
    except Exception as e:
        log.warning(event, **ids, error=safe_error(e, 300))
        ctx.request_resync()


async def publish_agent(ctx: AppContext, agent: Agent) -> None:
    """The agent's current version, under its version key and (moving forward only) its current key."""
    config = AgentConfig.model_validate(agent.model_dump())
    await _mirror(ctx, lambda: ctx.publisher.publish_agent(config), "kv_publish_failed", agent_id=agent.id)


async def retract_agent(ctx: AppContext, agent_id: str) -> None:
    await _mirror(ctx, lambda: ctx.publisher.retract_agent(agent_id), "kv_retract_failed", agent_id=agent_id)


async def publish_number(ctx: AppContext, row: PhoneNumber, *, old_number: str | None = None) -> None:
    """The number's route; ``old_number``, when the number itself changed, loses its route."""

    async def write() -> None:
        if old_number is not None and old_number != row.number:
            await ctx.publisher.retract_number(old_number)
        await ctx.publisher.publish_number(
            NumberRoute(number=row.number, tenant_id=row.tenant_id, agent_id=row.agent_id)
        )

    await _mirror(ctx, write, "kv_publish_failed", number_id=row.id)


async def retract_number(ctx: AppContext, row: PhoneNumber) -> None:
    await _mirror(ctx, lambda: ctx.publisher.retract_number(row.number), "kv_retract_failed", number_id=row.id)


async def publish_secret(ctx: AppContext, tenant_id: str, name: str) -> None:
    """KV made to hold what PostgreSQL holds for the secret now: its sealed value, or nothing.

    Publications of one secret take turns, and each reads the row when its turn comes, so the last one writes the
    latest committed value whatever order concurrent requests finish in (a secret has no version to compare)."""

    async def write() -> None:
        async with transaction(ctx) as conn:
            await tenant_secrets.take_turn(conn, tenant_id, name)
            sealed = await tenant_secrets.sealed(conn, tenant_id, name)
            if sealed is None:
                await ctx.publisher.retract_secret(tenant_id, name)
            else:
                await ctx.publisher.publish_secret(tenant_id, name, sealed)

    await _mirror(ctx, write, "kv_publish_failed", tenant_id=tenant_id, secret=name)


async def publish_trunk(ctx: AppContext, row: SipTrunkOut) -> None:
    trunk = trunks.as_trunk(row)
    await _mirror(ctx, lambda: ctx.publisher.publish_trunk(trunk), "kv_publish_failed", trunk_id=row.id)


async def retract_trunk(ctx: AppContext, trunk_id: str) -> None:
    await _mirror(ctx, lambda: ctx.publisher.retract_trunk(trunk_id), "kv_retract_failed", trunk_id=trunk_id)


async def load_snapshot(pool: asyncpg.Pool) -> Snapshot:
    """What KV should hold, read in one consistent snapshot of PostgreSQL."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        return Snapshot(
            agents=await agents.live_configs(conn),
            versions=await agents.all_versions(conn),
            numbers=await numbers.all_routes(conn),
            secrets=await tenant_secrets.all_sealed(conn),
            trunks=await trunks.all_trunks(conn),
        )
