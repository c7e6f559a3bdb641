"""Webhook delivery: a tenant's endpoints receive its call events, signed per the Standard Webhooks spec.

Outbox. ``enqueue`` (the ``analytics-webhooks`` consumer) writes one ``webhook_deliveries`` row per active
endpoint of the event's tenant subscribed to its type (or ``*``), keyed by (endpoint, event id): a redelivered
event adds nothing. The message id (header ``webhook-id``) is derived from both, so it is the same on every retry.

Worker. ``WebhookDelivery.run`` claims due rows (``FOR UPDATE SKIP LOCKED``, then a lease pushed into
``next_attempt_at``, so several replicas never make the same attempt) and POSTs each through the egress guard
(``voice_runtime.egress``: an internal address is refused when the connection is made unless EGRESS_ALLOW names
it; redirects are not followed: a 3xx is a failed attempt). Headers: ``webhook-id``, ``webhook-timestamp`` (the
attempt's time) and ``webhook-signature`` = ``v1,<base64 HMAC-SHA256 of id.timestamp.body>`` under the endpoint's
secret (``whsec_`` + base64 key bytes), made with the ``standardwebhooks`` library.

Outcomes. 2xx: delivered. 410 Gone: the delivery fails and the endpoint is disabled (``is_active`` false,
``disabled_reason``), recorded in the audit log. Anything else (no answer, a blocked address, 3xx, 4xx, 5xx):
retried on the spec's schedule (after 0 s, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: 8 attempts in all) times
``WEBHOOK_RETRY_SCALE`` plus up to ``WEBHOOK_RETRY_JITTER`` of the delay; a 429 or 5xx with ``Retry-After`` waits
at least that long (capped at ``WEBHOOK_RETRY_AFTER_MAX_S``). After the last attempt the delivery fails. Every
attempt is logged in ``webhook_attempts`` (status, short reason, never the response body); control-api lists them
and redelivers (a new round of attempts, same message id).

Secrets are sealed at rest (SecretBox, name ``webhook-<id>``); ``seal_readable_secrets`` migrates the readable
secrets of earlier releases at start-up.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import asyncpg
import httpx
from prometheus_client import Counter
from standardwebhooks import Webhook
from voice_runtime.bus import Transient
from voice_runtime.egress import BlockedAddress, EgressPolicy, guarded_client
from voice_runtime.logging import get_logger, safe_error
from voice_runtime.secretbox import SecretBox, SecretError
from voice_schemas import Envelope

log = get_logger(__name__)

# the spec's retry schedule: the delay before attempt n+1 (attempt 1 is immediate)
SCHEDULE_S: tuple[float, ...] = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
SECRET_PREFIX = "whsec_"
KEY_BYTES = (24, 64)  # a spec secret is whsec_ + base64 of this many random bytes
USER_AGENT = "voice-platform-webhooks/1"
MAX_ERROR_CHARS = 200

ATTEMPTS = Counter("voice_webhook_attempts_total", "Webhook delivery attempts by outcome", ["outcome"])


def secret_name(webhook_id: str) -> str:
    """The SecretBox name an endpoint's secret is sealed under (control-api seals with the same name)."""
    return f"webhook-{webhook_id}"


def spec_secret(value: str) -> tuple[str, bool]:
    """``value`` as a Standard Webhooks secret, and whether it had to be re-derived: a secret that is not
    ``whsec_`` + base64 of 24-64 bytes becomes ``whsec_`` + base64 of its UTF-8 bytes (the same HMAC key)."""
    if value.startswith(SECRET_PREFIX):
        try:
            raw = base64.b64decode(value[len(SECRET_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if KEY_BYTES[0] <= len(raw) <= KEY_BYTES[1]:
            return value, False
    return SECRET_PREFIX + base64.b64encode(value.encode()).decode(), True


def body_of(env: Envelope[Any]) -> str:
    """The JSON a receiver gets: the spec's ``type`` / ``timestamp`` / ``data`` shape."""
    data = {
        "event_id": env.id,
        "tenant_id": env.tenant_id,
        "call_id": env.call_id,
        "turn_id": env.turn_id,
        **env.data.model_dump(mode="json"),
    }
    return json.dumps(
        {"type": env.type, "timestamp": env.occurred_at.isoformat(), "data": data},
        separators=(",", ":"),
        ensure_ascii=False,
    )


def sign(secret: str, msg_id: str, at: datetime, body: str) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, at, body),
    }


def retry_after_s(value: str | None, now: datetime) -> float | None:
    """``Retry-After``: delay-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


# ------------------------------------------------------------------ outbox
async def enqueue(pool: asyncpg.Pool, env: Envelope[Any]) -> int:
    """Queue ``env`` for every matching endpoint of its tenant; returns the rows added (0 on a redelivery)."""
    try:
        async with pool.acquire() as conn:
            status = await conn.execute(
                """
                INSERT INTO webhook_deliveries
                    (id, tenant_id, webhook_id, event_id, event_type, call_id, body, next_attempt_at)
                SELECT 'msg_' || md5(w.id || ':' || $2), w.tenant_id, w.id, $2, $3, $4, $5, $6
                FROM webhooks w
                WHERE w.tenant_id = $1 AND w.is_active AND ($3 = ANY(w.events) OR '*' = ANY(w.events))
                ON CONFLICT DO NOTHING
                """,
                env.tenant_id,
                env.id,
                env.type,
                env.call_id,
                body_of(env),
                datetime.now(UTC),
            )
    except (OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError) as e:
        raise Transient(f"database unavailable: {e}") from e
    return int(status.split()[-1])


async def seal_readable_secrets(pool: asyncpg.Pool, box: SecretBox) -> int:
    """Seal every secret still stored readable (releases before 0005), re-deriving non-conforming ones; each is
    recorded in the tenant's audit log (``webhook.secret_sealed``, with ``rederived``). Returns how many."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch("SELECT id, tenant_id, secret FROM webhooks WHERE secret IS NOT NULL FOR UPDATE")
        for r in rows:
            value, rederived = spec_secret(r["secret"])
            await conn.execute(
                "UPDATE webhooks SET secret_sealed = $2, secret = NULL WHERE id = $1",
                r["id"],
                box.seal(r["tenant_id"], secret_name(r["id"]), value),
            )
            await conn.execute(
                "INSERT INTO audit_log (tenant_id, actor_type, action, resource_type, resource_id, details)"
                " VALUES ($1, 'system', 'webhook.secret_sealed', 'webhook', $2, $3::jsonb)",
                r["tenant_id"],
                r["id"],
                json.dumps({"rederived": rederived}),
            )
    if rows:
        log.info("webhook_secrets_sealed", count=len(rows))
    return len(rows)


# ------------------------------------------------------------------ worker
@dataclass(frozen=True)
class DeliverySettings:
    retry_scale: float = 1.0
    retry_jitter: float = 0.1
    retry_after_max_s: float = 36000.0
    timeout_s: float = 15.0
    poll_interval_s: float = 1.0
    batch: int = 16

    @property
    def lease_s(self) -> float:
        """How long a claimed delivery stays invisible to other replicas (longer than one attempt)."""
        return self.timeout_s * 2 + 30.0


@dataclass(frozen=True)
class Claimed:
    id: str
    tenant_id: str
    webhook_id: str
    body: str
    step: int
    url: str
    sealed: bytes | None
    active: bool


@dataclass(frozen=True)
class Outcome:
    status: int | None
    error: str | None
    duration_ms: float
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def gone(self) -> bool:
        return self.status == 410


class WebhookDelivery:
    def __init__(self, pool: asyncpg.Pool, box: SecretBox, policy: EgressPolicy, settings: DeliverySettings) -> None:
        self.pool = pool
        self.box = box
        self.settings = settings
        self.client = guarded_client(policy, timeout=settings.timeout_s, follow_redirects=False)
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """New rows are due (this replica queued them): look now rather than at the next poll."""
        self._wake.set()

    async def close(self) -> None:
        await self.client.aclose()

    async def run(self) -> None:
        while True:
            try:
                done = await self.tick()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                log.warning("webhook_worker_failed", error=safe_error(e))
                done = 0
            if done:
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval_s)
            except TimeoutError:
                pass

    async def tick(self) -> int:
        """Claim the due deliveries (a batch) and attempt each; returns how many."""
        claimed = await self.claim()
        if claimed:
            await asyncio.gather(*(self.attempt(c) for c in claimed))
        return len(claimed)

    async def claim(self) -> list[Claimed]:
        now = datetime.now(UTC)
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                """
                WITH due AS (
                    SELECT id FROM webhook_deliveries
                    WHERE status = 'pending' AND next_attempt_at <= $1
                    ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED
                )
                UPDATE webhook_deliveries d SET next_attempt_at = $3
                FROM due, webhooks w
                WHERE d.id = due.id AND w.id = d.webhook_id
                RETURNING d.id, d.tenant_id, d.webhook_id, d.body, d.step, w.url, w.secret_sealed, w.is_active,
                          w.secret IS NOT NULL AS readable
                """,
                now,
                self.settings.batch,
                now + timedelta(seconds=self.settings.lease_s),
            )
        if any(r["readable"] for r in rows):  # written by a control-api of an earlier release
            await seal_readable_secrets(self.pool, self.box)
            async with self.pool.acquire() as conn:
                sealed = dict(
                    await conn.fetch(
                        "SELECT id, secret_sealed FROM webhooks WHERE id = ANY($1::text[])",
                        [r["webhook_id"] for r in rows],
                    )
                )
        else:
            sealed = {r["webhook_id"]: r["secret_sealed"] for r in rows}
        return [
            Claimed(
                r["id"],
                r["tenant_id"],
                r["webhook_id"],
                r["body"],
                r["step"],
                r["url"],
                sealed.get(r["webhook_id"]),
                r["is_active"],
            )
            for r in rows
        ]

    async def attempt(self, c: Claimed) -> None:
        at = datetime.now(UTC)
        if not c.active:
            await self._finish(c, at, Outcome(None, "endpoint disabled", 0.0), final=True)
            return
        outcome = await self._post(c, at)
        ATTEMPTS.labels("delivered" if outcome.ok else "gone" if outcome.gone else "failed").inc()
        log.info(
            "webhook_attempt",
            delivery=c.id,
            webhook=c.webhook_id,
            attempt=c.step + 1,
            status=outcome.status,
            error=outcome.error,
        )
        await self._finish(c, at, outcome, final=outcome.ok or outcome.gone or c.step + 1 >= len(SCHEDULE_S))

    async def _post(self, c: Claimed, at: datetime) -> Outcome:
        start = time.monotonic()
        try:
            if c.sealed is None:
                raise SecretError("the endpoint has no sealed secret")
            secret = self.box.open(c.tenant_id, secret_name(c.webhook_id), c.sealed)
            headers = {"content-type": "application/json", "user-agent": USER_AGENT, **sign(secret, c.id, at, c.body)}
            r = await self.client.post(c.url, content=c.body.encode(), headers=headers)
        except BlockedAddress:
            # not quoted: the resolved address would tell a tenant what internal names resolve to
            return Outcome(None, "refused: the URL reaches an internal address (EGRESS_ALLOW)", _ms(start))
        except SecretError as e:
            return Outcome(None, f"secret: {e}"[:MAX_ERROR_CHARS], _ms(start))
        except httpx.HTTPError as e:
            return Outcome(None, f"{type(e).__name__}: {e}"[:MAX_ERROR_CHARS], _ms(start))
        retry_after = None
        if r.status_code == 429 or r.status_code >= 500:
            retry_after = retry_after_s(r.headers.get("retry-after"), datetime.now(UTC))
        error = None if 200 <= r.status_code < 300 else f"HTTP {r.status_code}"
        return Outcome(r.status_code, error, _ms(start), retry_after)

    def next_delay_s(self, step_done: int, retry_after: float | None) -> float:
        """Delay before the next attempt after ``step_done`` attempts of this round failed."""
        s = self.settings
        delay = SCHEDULE_S[step_done] * s.retry_scale
        delay += delay * random.uniform(0.0, s.retry_jitter)
        if retry_after is not None:
            delay = max(delay, min(retry_after, s.retry_after_max_s))
        return delay

    async def _finish(self, c: Claimed, at: datetime, o: Outcome, *, final: bool) -> None:
        status = "delivered" if o.ok else "failed" if final else "pending"
        next_at = None if final else at + timedelta(seconds=self.next_delay_s(c.step + 1, o.retry_after))
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO webhook_attempts (delivery_id, tenant_id, at, status, error, duration_ms, retry_after_s)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7)",
                c.id,
                c.tenant_id,
                at,
                o.status,
                o.error,
                o.duration_ms,
                o.retry_after,
            )
            await conn.execute(
                """
                UPDATE webhook_deliveries SET status = $2, step = step + 1, attempts = attempts + 1,
                    next_attempt_at = $3, last_status = $4, last_error = $5, updated_at = now(),
                    delivered_at = CASE WHEN $2 = 'delivered' THEN $6 ELSE delivered_at END
                WHERE id = $1
                """,
                c.id,
                status,
                next_at,
                o.status,
                o.error,
                at,
            )
            if o.gone:
                disabled = await conn.fetchval(
                    "UPDATE webhooks SET is_active = false, disabled_reason = $2, updated_at = now(),"
                    " version = version + 1 WHERE id = $1 AND is_active RETURNING version",
                    c.webhook_id,
                    f"the receiver answered 410 Gone at {at.isoformat()}",
                )
                if disabled is not None:
                    await conn.execute(
                        "INSERT INTO audit_log (tenant_id, actor_type, action, resource_type, resource_id, details)"
                        " VALUES ($1, 'system', 'webhook.disable', 'webhook', $2, $3::jsonb)",
                        c.tenant_id,
                        c.webhook_id,
                        json.dumps({"reason": "410", "version": disabled}),
                    )
                    log.info("webhook_disabled", webhook=c.webhook_id, reason="410")


def _ms(start: float) -> float:
    return round((time.monotonic() - start) * 1000.0, 1)
