"""A tenant's price table (``tenant_prices``): what analytics costs each of its calls with."""

from __future__ import annotations

import asyncpg

from ..models_analytics import TenantPrices, TenantPricesPut

COLUMNS = (
    "tenant_id, currency, telephony_per_minute, stt_per_minute, llm_input_per_1k_tokens, llm_output_per_1k_tokens, "
    "tts_per_1k_chars, updated_at, version"
)
PRICE_FIELDS = ("telephony_per_minute", "stt_per_minute", "llm_input_per_1k_tokens", "llm_output_per_1k_tokens",
                "tts_per_1k_chars")


def default(tenant_id: str) -> TenantPrices:
    """The platform default: every price zero, USD (matches voice_analytics.cost.DEFAULT_PRICES)."""
    zero = TenantPricesPut()
    return TenantPrices(tenant_id=tenant_id, currency=zero.currency, is_default=True, updated_at=None, version=0,
                        **{f: getattr(zero, f) for f in PRICE_FIELDS})


async def get(conn: asyncpg.Connection, tenant_id: str, *, for_update: bool = False) -> TenantPrices | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(f"SELECT {COLUMNS} FROM tenant_prices WHERE tenant_id = $1{lock}", tenant_id)
    return TenantPrices(**dict(row), is_default=False) if row else None


async def put(conn: asyncpg.Connection, tenant_id: str, body: TenantPricesPut) -> TenantPrices:
    row = await conn.fetchrow(
        f"""
        INSERT INTO tenant_prices (tenant_id, currency, {", ".join(PRICE_FIELDS)})
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        ON CONFLICT (tenant_id) DO UPDATE SET currency = EXCLUDED.currency,
            {", ".join(f"{f} = EXCLUDED.{f}" for f in PRICE_FIELDS)},
            updated_at = now(), version = tenant_prices.version + 1
        RETURNING {COLUMNS}
        """,
        tenant_id,
        body.currency,
        *(getattr(body, f) for f in PRICE_FIELDS),
    )
    return TenantPrices(**dict(row), is_default=False)
