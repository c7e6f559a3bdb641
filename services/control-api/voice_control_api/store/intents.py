"""Intent counts per agent: the caller turns brain classified (``call_turns.intent``, written by analytics)."""

from __future__ import annotations

from datetime import datetime

import asyncpg


async def counts(conn: asyncpg.Connection, tenant_id: str, agent_id: str, started_after: datetime | None,
                 started_before: datetime | None) -> list[asyncpg.Record]:
    """(intent, turns, cached, avg_confidence) of the agent's calls in the window, most matched first."""
    return list(await conn.fetch(
        """
        SELECT t.intent, count(*) AS turns, count(*) FILTER (WHERE t.intent_cached) AS cached,
               avg(t.intent_confidence)::double precision AS avg_confidence
        FROM calls c JOIN call_turns t ON t.call_id = c.id AND t.tenant_id = c.tenant_id
        WHERE c.tenant_id = $1 AND c.agent_id = $2 AND t.intent IS NOT NULL
          AND ($3::timestamptz IS NULL OR c.started_at >= $3) AND ($4::timestamptz IS NULL OR c.started_at < $4)
        GROUP BY t.intent ORDER BY turns DESC, t.intent
        """,
        tenant_id, agent_id, started_after, started_before,
    ))
