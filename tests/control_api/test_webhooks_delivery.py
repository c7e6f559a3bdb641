"""Webhook delivery end to end: events on the bus -> analytics' outbox -> a real HTTP receiver on localhost, signed
per Standard Webhooks; the delivery log and redeliver through control-api.

Real NATS (a server of this module's own, so no other analytics competes for the consumer), real PostgreSQL, a
real receiver (uvicorn) reached through the egress guard, which EGRESS_ALLOW opens for its address only. The retry
schedule is compressed (WEBHOOK_RETRY_SCALE); no test asserts how long anything took, only the order and count of
what the receiver got and what was logged (a Retry-After is checked as a lower bound on the logged attempt times).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from standardwebhooks import Webhook
from voice_analytics.service import AnalyticsService
from voice_analytics.settings import AnalyticsSettings
from voice_analytics.webhooks import SCHEDULE_S, seal_readable_secrets, secret_name, spec_secret
from voice_control_api.service import ControlApiService
from voice_devstack.stack import embedded_nats
from voice_runtime.bus import Bus
from voice_runtime.secretbox import SecretBox, parse_key
from voice_schemas import Envelope, events, make, subjects

from ..conftest import free_port
from ..waiting import until
from .conftest import make_settings
from .helpers import SECRETS_KEY, bearer, create_tenant, ok, problem

pytestmark = pytest.mark.integration

Headers = dict[str, str]


@dataclass
class Hit:
    path: str
    headers: Headers
    body: bytes


@dataclass
class Receiver:
    """What the receiver got, per path, and what it answers next per path (default 200)."""

    hits: dict[str, list[Hit]] = field(default_factory=lambda: defaultdict(list))
    plans: dict[str, list[tuple[int, Headers]]] = field(default_factory=dict)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.hits[scope["path"]].append(Hit(scope["path"], headers, body))
        plan = self.plans.get(scope["path"]) or []
        status, extra = plan.pop(0) if plan else (200, {})
        raw = [(k.encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": b"ok"})


@contextlib.asynccontextmanager
async def serve(app: Receiver, port: int) -> AsyncIterator[None]:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_config=None, access_log=False)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the receiver did not start"
        await asyncio.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        await task


@dataclass
class World:
    api: httpx.AsyncClient
    bus: Bus
    db: asyncpg.Connection
    receiver: Receiver
    url: str  # the allow-listed receiver
    blocked_url: str  # the same receiver on a port EGRESS_ALLOW does not name, by a name (localhost)



@pytest.fixture(scope="module")
async def world(database_url: str) -> AsyncIterator[World]:
    port, blocked_port = free_port(), free_port()
    allow = f"127.0.0.1:{port}"
    receiver = Receiver()
    with embedded_nats() as nats_url:
        control = ControlApiService(make_settings(database_url, nats_url, egress_allow=allow))
        app = control.app()
        analytics = AnalyticsService(
            AnalyticsSettings(
                nats_url=nats_url,
                database_url=database_url,
                secrets_key=SECRETS_KEY,
                egress_allow=allow,
                webhook_retry_scale=0.00005,  # 5 s -> 0.25 ms, 5 min -> 15 ms, 2 h -> 0.36 s, 10 h -> 1.8 s
                webhook_poll_interval_s=0.05,
                log_level="WARNING",
            )
        )
        async with (
            serve(receiver, port),
            serve(receiver, blocked_port),
            app.router.lifespan_context(app),
        ):
            await analytics.start()
            bus = await Bus.connect(nats_url, "test")
            db = await asyncpg.connect(database_url)
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            try:
                async with httpx.AsyncClient(transport=transport, base_url="http://control-api.test") as api:
                    yield World(api, bus, db, receiver, f"http://{allow}", f"http://localhost:{blocked_port}")
            finally:
                await db.close()
                await bus.close()
                await analytics.stop()


async def tenant_with_hook(w: World, path: str, events_: list[str] | None = None) -> tuple[str, str, dict[str, Any]]:
    """A new tenant (admin key) with one endpoint at ``path`` of the receiver: (tenant id, admin key, webhook)."""
    t = await create_tenant(w.api, f"hooks {path}")
    hook = await ok(
        await w.api.post(
            "/v1/webhooks", json={"url": w.url + path, "events": events_ or ["*"]}, headers=bearer(t.admin_key)
        ),
        201,
    )
    return t.id, t.admin_key, hook


async def publish(w: World, env: Envelope[Any]) -> None:
    await w.bus.publish(env)


def call_events(tenant_id: str) -> list[Envelope[Any]]:
    call_id = subjects.new_call_id()
    return [
        make(
            events.CallStarted(agent_id="a1", agent_version=1, channel="twilio", from_number="+14155550100"),
            tenant_id=tenant_id,
            call_id=call_id,
        ),
        make(
            events.TranscriptFinalized(utterance_id="u1", text="where is my parcel"),
            tenant_id=tenant_id,
            call_id=call_id,
        ),
        make(
            events.CallEnded(reason=events.EndReason.caller_hangup, duration_s=12.5),
            tenant_id=tenant_id,
            call_id=call_id,
        ),
    ]


def verified(secret: str, hit: Hit) -> dict[str, Any]:
    """The payload, which must carry a valid Standard Webhooks signature under ``secret``."""
    payload: dict[str, Any] = Webhook(secret).verify(hit.body, hit.headers)
    return payload


async def deliveries(w: World, key: str, hook_id: str, **params: str) -> list[dict[str, Any]]:
    body = await ok(await w.api.get(f"/v1/webhooks/{hook_id}/deliveries", params=params, headers=bearer(key)))
    return body["items"]  # type: ignore[no-any-return]


async def settled(w: World, key: str, hook_id: str, count: int) -> list[dict[str, Any]]:
    """Wait until ``count`` deliveries of the endpoint exist and none is pending."""

    async def check() -> list[dict[str, Any]] | None:
        items = await deliveries(w, key, hook_id)
        return items if len(items) == count and all(d["status"] != "pending" for d in items) else None

    return await until(check, f"{count} settled deliveries")  # type: ignore[no-any-return]


# ------------------------------------------------------------------ tests
async def test_every_event_arrives_signed_once_and_other_tenants_see_nothing(world: World) -> None:
    w = world
    a_id, a_key, a_hook = await tenant_with_hook(w, "/a")
    _, b_key, b_hook = await tenant_with_hook(w, "/b")
    assert a_hook["secret"].startswith("whsec_") and len(base64.b64decode(a_hook["secret"][6:])) == 32
    envs = call_events(a_id)
    for env in envs:
        await publish(w, env)
    await publish(w, envs[1])  # the same event again (within the duplicate window: the bus drops it)
    # the same event bytes under another message id: JetStream keeps it; the outbox must not add a delivery
    await w.bus.js.publish(envs[2].subject, envs[2].to_bytes(), headers={"Nats-Msg-Id": subjects.new_id()})
    # an event of a type that webhooks do not receive
    await publish(w, make(events.CallAnswered(), tenant_id=a_id, call_id=envs[0].call_id))

    items = await settled(w, a_key, a_hook["id"], 3)
    assert {d["status"] for d in items} == {"delivered"}
    hits = w.receiver.hits["/a"]
    assert len(hits) == 3
    payloads = [verified(a_hook["secret"], h) for h in hits]
    assert sorted(p["type"] for p in payloads) == ["call.ended", "call.started", "transcript.final"]
    assert {p["data"]["event_id"] for p in payloads} == {e.id for e in envs}
    assert all(p["data"]["call_id"] == envs[0].call_id and p["data"]["tenant_id"] == a_id for p in payloads)
    assert {h.headers["webhook-id"] for h in hits} == {d["id"] for d in items}
    for h in hits:
        with pytest.raises(Exception, match="signature"):
            Webhook(b_hook["secret"]).verify(h.body, h.headers)  # another endpoint's secret does not verify

    # tenant B: nothing received, nothing listed, A's endpoint and deliveries invisible
    assert w.receiver.hits["/b"] == []
    assert await deliveries(w, b_key, b_hook["id"]) == []
    problem(await w.api.get(f"/v1/webhooks/{a_hook['id']}/deliveries", headers=bearer(b_key)), 404)
    problem(
        await w.api.post(f"/v1/webhooks/{a_hook['id']}/deliveries/{items[0]['id']}/redeliver", headers=bearer(b_key)),
        404,
    )
    problem(
        await w.api.post(f"/v1/webhooks/{b_hook['id']}/deliveries/{items[0]['id']}/redeliver", headers=bearer(b_key)),
        404,
    )
    # filters
    assert [d["event_type"] for d in await deliveries(w, a_key, a_hook["id"], event="call.ended")] == ["call.ended"]
    assert await deliveries(w, a_key, a_hook["id"], status="failed") == []

    # redeliver: the same message id and body, a valid fresh signature, logged as a second attempt
    target = next(d for d in items if d["event_type"] == "call.started")
    again = await ok(
        await w.api.post(f"/v1/webhooks/{a_hook['id']}/deliveries/{target['id']}/redeliver", headers=bearer(a_key)),
        202,
    )
    assert again["id"] == target["id"]
    await until(lambda: _count(w, "/a", 4), "the redelivery")
    assert w.receiver.hits["/a"][3].headers["webhook-id"] == target["id"]
    assert verified(a_hook["secret"], w.receiver.hits["/a"][3])["data"]["event_id"] == target["event_id"]
    items = await settled(w, a_key, a_hook["id"], 3)
    redone = next(d for d in items if d["id"] == target["id"])
    assert redone["attempts"] == 2 and [a["status"] for a in redone["attempt_log"]] == [200, 200]
    audit = await w.db.fetchval(
        "SELECT count(*) FROM audit_log WHERE tenant_id = $1 AND action = 'webhook.redeliver'", a_id
    )
    assert audit == 1


async def _count(w: World, path: str, n: int) -> bool:
    return len(w.receiver.hits[path]) >= n


async def test_a_failing_receiver_gets_the_event_once_per_retry_then_no_more(world: World) -> None:
    w = world
    t_id, key, hook = await tenant_with_hook(w, "/flaky", ["call.ended"])
    w.receiver.plans["/flaky"] = [(500, {}), (503, {}), (502, {})]  # then 200
    env = call_events(t_id)[2]
    await publish(w, env)
    (item,) = await settled(w, key, hook["id"], 1)
    assert item["status"] == "delivered" and item["attempts"] == 4
    assert [a["status"] for a in item["attempt_log"]] == [500, 503, 502, 200]
    hits = w.receiver.hits["/flaky"]
    assert len(hits) == 4
    assert {h.headers["webhook-id"] for h in hits} == {item["id"]}
    assert {h.body for h in hits} == {hits[0].body}  # the same message on every retry
    for h in hits:
        assert verified(hook["secret"], h)["data"]["event_id"] == env.id
    # delivered: nothing is due any more, so the receiver gets no fifth request (give the worker many polls)
    assert await w.db.fetchval("SELECT next_attempt_at FROM webhook_deliveries WHERE id = $1", item["id"]) is None
    await asyncio.sleep(0.5)
    assert len(w.receiver.hits["/flaky"]) == 4


async def test_gone_disables_the_endpoint(world: World) -> None:
    w = world
    t_id, key, hook = await tenant_with_hook(w, "/gone")
    w.receiver.plans["/gone"] = [(410, {})]
    first, *_ = call_events(t_id)
    await publish(w, first)
    (item,) = await settled(w, key, hook["id"], 1)
    assert item["status"] == "failed" and item["attempts"] == 1 and item["last_status"] == 410
    got = await ok(await w.api.get(f"/v1/webhooks/{hook['id']}", headers=bearer(key)))
    assert got["is_active"] is False and "410" in got["disabled_reason"] and got["version"] == 2
    assert len(w.receiver.hits["/gone"]) == 1
    # a later event is not queued for the disabled endpoint; redeliver is refused until an admin enables it
    later = call_events(t_id)[0]
    await publish(w, later)
    marker_id, marker_key, marker = await tenant_with_hook(w, "/marker")  # a later event that is delivered
    await publish(w, call_events(marker_id)[0])
    await settled(w, marker_key, marker["id"], 1)
    await until(
        lambda: _consumer_idle(w),
        "analytics to have handled every event",
    )
    assert len(await deliveries(w, key, hook["id"])) == 1
    problem(await w.api.post(f"/v1/webhooks/{hook['id']}/deliveries/{item['id']}/redeliver", headers=bearer(key)), 409)
    await ok(await w.api.patch(f"/v1/webhooks/{hook['id']}", json={"is_active": True}, headers=bearer(key)))
    got = await ok(await w.api.get(f"/v1/webhooks/{hook['id']}", headers=bearer(key)))
    assert got["is_active"] and got["disabled_reason"] is None
    actions = await w.db.fetch(
        "SELECT action, actor_type FROM audit_log WHERE tenant_id = $1 AND resource_id = $2 ORDER BY id",
        t_id,
        hook["id"],
    )
    assert [(r["action"], r["actor_type"]) for r in actions][1] == ("webhook.disable", "system")


async def _consumer_idle(w: World) -> bool:
    info = await w.bus.js.consumer_info("CALLS", "analytics-webhooks")
    return not info.num_pending and not info.num_ack_pending


async def test_retry_after_is_honoured(world: World) -> None:
    w = world
    t_id, key, hook = await tenant_with_hook(w, "/busy")
    w.receiver.plans["/busy"] = [(429, {"Retry-After": "2"}), (503, {"Retry-After": "1"})]
    await publish(w, call_events(t_id)[0])
    (item,) = await settled(w, key, hook["id"], 1)
    log = item["attempt_log"]
    assert [a["status"] for a in log] == [429, 503, 200]
    assert [a["retry_after_s"] for a in log] == [2.0, 1.0, None]
    at = [datetime.fromisoformat(a["at"]) for a in log]
    # the compressed schedule alone would retry within milliseconds: the receiver's Retry-After set the pace
    assert (at[1] - at[0]).total_seconds() >= 2.0
    assert (at[2] - at[1]).total_seconds() >= 1.0


async def test_an_internal_address_is_refused_without_egress_allow(world: World) -> None:
    w = world
    t_id, key, hook = await tenant_with_hook(w, "/internal")
    # control-api refuses it when saved ...
    r = await w.api.patch(f"/v1/webhooks/{hook['id']}", json={"url": w.blocked_url + "/x"}, headers=bearer(key))
    problem(r, 422)
    assert "internal address" in r.text
    # ... and analytics when it connects: a name that resolved elsewhere when it was saved (DNS rebinding)
    await w.db.execute("UPDATE webhooks SET url = $2 WHERE id = $1", hook["id"], w.blocked_url + "/internal")
    await publish(w, call_events(t_id)[0])
    (item,) = await settled(w, key, hook["id"], 1)
    assert item["status"] == "failed" and item["attempts"] == len(SCHEDULE_S)
    assert all(a["status"] is None and "internal address" in a["error"] for a in item["attempt_log"])
    assert w.receiver.hits["/internal"] == []


async def test_readable_secrets_are_sealed_as_spec_secrets(world: World, database_url: str) -> None:
    w = world
    t_id, key, hook = await tenant_with_hook(w, "/legacy")
    legacy = "whsec_" + secrets.token_urlsafe(32).replace("-", "A").replace("_", "B") + "-_"  # not base64
    await w.db.execute("UPDATE webhooks SET secret = $2, secret_sealed = NULL WHERE id = $1", hook["id"], legacy)
    box = SecretBox(parse_key(SECRETS_KEY))
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        assert await seal_readable_secrets(pool, box) == 1
    finally:
        await pool.close()
    row = await w.db.fetchrow("SELECT secret, secret_sealed FROM webhooks WHERE id = $1", hook["id"])
    assert row["secret"] is None
    spec, rederived = spec_secret(legacy)
    assert rederived and box.open(t_id, secret_name(hook["id"]), row["secret_sealed"]) == spec
    assert base64.b64decode(spec[6:]) == legacy.encode()  # the same HMAC key bytes
    await publish(w, call_events(t_id)[0])
    await settled(w, key, hook["id"], 1)
    (hit,) = w.receiver.hits["/legacy"]
    verified(spec, hit)
    # conforming secrets are kept as they are
    assert spec_secret(hook["secret"]) == (hook["secret"], False)


async def test_webhook_secrets_must_be_spec_secrets(world: World) -> None:
    w = world
    t = await create_tenant(w.api, "hooks secrets")
    good = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    for bad in ("whsec_" + "-_" * 20, "whsec_" + base64.b64encode(b"short").decode(), "plain-secret-" + "x" * 20):
        body = {"url": w.url + "/s", "events": ["*"], "secret": bad}
        problem(await w.api.post("/v1/webhooks", json=body, headers=bearer(t.admin_key)), 422)
    made = await ok(
        await w.api.post(
            "/v1/webhooks", json={"url": w.url + "/s", "events": ["*"], "secret": good}, headers=bearer(t.admin_key)
        ),
        201,
    )
    assert made["secret"] == good
    stored = await w.db.fetchrow("SELECT secret, secret_sealed FROM webhooks WHERE id = $1", made["id"])
    assert stored["secret"] is None and good.encode() not in stored["secret_sealed"]
    problem(
        await w.api.post(
            "/v1/webhooks", json={"url": w.url + "/s", "events": ["transcript.partial"]}, headers=bearer(t.admin_key)
        ),
        422,
    )


async def test_without_secrets_key_webhooks_are_refused(database_url: str, nats_url: str) -> None:
    svc = ControlApiService(make_settings(database_url, nats_url, secrets_key=None))
    app = svc.app()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://control-api.test") as api:
            t = await create_tenant(api, "hooks no key")
            r = await api.post(
                "/v1/webhooks",
                json={"url": "https://hooks.example.com/x", "events": ["*"]},
                headers=bearer(t.admin_key),
            )
            problem(r, 503)
