"""Post-call analytics through the API: a tenant's price table (its admins, or a platform admin) and the daily
aggregates per agent (a supervisor sees only the agents they own, as with calls).

Days are UTC days of the calls' start; ``start``..``end`` are inclusive and span at most ``MAX_DAYS``. First-call
resolution looks ``fcr_window_hours`` past each caller's first call of the day, into later days too, so a recent
day's FCR can still fall while its window is open.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from ..context import AppContext
from ..models_analytics import DailyReport, TenantPrices, TenantPricesPut
from ..principal import Principal
from ..store import agents as agent_store
from ..store import analytics as store
from ..store import prices as price_store
from ..store import tenants as tenant_store
from . import audit_log
from .common import ExpectedVersion, connection, found, transaction
from .errors import Forbidden, NotFound

MAX_DAYS = 366
DEFAULT_DAYS = 30


def _check_tenant(principal: Principal, tenant_id: str) -> None:
    if not (principal.platform_admin or principal.tenant_id == tenant_id):
        raise NotFound("tenant")
    if not (principal.platform_admin or principal.is_admin):
        raise Forbidden("admin role required")


async def get_prices(ctx: AppContext, principal: Principal, tenant_id: str) -> TenantPrices:
    """The tenant's price table, or the platform default (``is_default``) while it has none."""
    _check_tenant(principal, tenant_id)
    async with connection(ctx) as conn:
        found(await tenant_store.get(conn, tenant_id), "tenant")
        return await price_store.get(conn, tenant_id) or price_store.default(tenant_id)


async def put_prices(
    ctx: AppContext, principal: Principal, tenant_id: str, body: TenantPricesPut, expected: ExpectedVersion
) -> TenantPrices:
    """Replace the tenant's price table; calls are costed with the table in force when they are summarised."""
    _check_tenant(principal, tenant_id)
    async with transaction(ctx) as conn:
        found(await tenant_store.get(conn, tenant_id, for_update=True), "tenant")
        current = await price_store.get(conn, tenant_id, for_update=True)
        expected.check(current.version if current else 0)
        prices = await price_store.put(conn, tenant_id, body)
        await audit_log.record(conn, principal, "tenant.prices_update", "tenant", tenant_id, tenant_id=tenant_id,
                               version=prices.version)
    return prices


def day_range(start: date | None, end: date | None, today: date | None = None) -> tuple[date, date]:
    """The inclusive range asked for: ``end`` defaults to today (UTC), ``start`` to ``DEFAULT_DAYS`` before it."""
    end = end or today or datetime.now(UTC).date()
    start = start or end - timedelta(days=DEFAULT_DAYS - 1)
    return start, end


async def daily(
    ctx: AppContext,
    principal: Principal,
    *,
    agent_id: str | None,
    start: date,
    end: date,
    fcr_window_hours: int,
    require_agent: bool = False,
) -> DailyReport:
    """Per agent and day: volume, AHT, cost, sentiment, CSAT and FCR. ``require_agent``: the agent must exist and
    be visible to the principal (NotFound otherwise), rather than give an empty report."""
    async with connection(ctx) as conn:
        if require_agent and agent_id is not None:
            found(await agent_store.get(conn, principal.tenant_id, agent_id, owner=principal.owner_filter), "agent")
        items = await store.daily(
            conn,
            principal.tenant_id,
            owner=principal.owner_filter,
            agent_id=agent_id,
            start=datetime.combine(start, time(), UTC),
            end=datetime.combine(end + timedelta(days=1), time(), UTC),
            fcr_window_hours=fcr_window_hours,
        )
    return DailyReport(from_=start, to=end, fcr_window_hours=fcr_window_hours, items=items)
