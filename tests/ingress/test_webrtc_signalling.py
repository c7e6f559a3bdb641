"""Browser-call signalling through control-api → NATS → ingress, on a real NATS server and PostgreSQL.

control-api (in process, its HTTP app over ASGI), two ingress replicas and analytics share a NATS server of their own;
a Python aiortc peer plays the browser. Checked: who may start and hang up a web call, what ingress refuses on the
bus (missing, forged, expired, other-channel, other-tenant and reused tokens: reuse across replicas), the answers
when ingress is absent or slow, and that the call is a normal call in the calls API."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from voice_analytics.service import AnalyticsService
from voice_analytics.settings import AnalyticsSettings
from voice_control_api.service import ControlApiService
from voice_control_api.usecases import web_calls
from voice_devstack.stack import embedded_nats
from voice_ingress.service import IngressService
from voice_ingress.settings import IngressSettings
from voice_ingress.transports.webrtc import WebRtcEndpoint
from voice_runtime import calltoken
from voice_runtime.bus import Bus
from voice_schemas import Envelope, events, parse, subjects
from voice_schemas.webrtc import WebRtcAnswer, WebRtcError

from ..control_api.conftest import make_settings
from ..control_api.helpers import bearer, ok, populate, problem
from .webrtc_peer import BrowserPeer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

KEY = secrets.token_bytes(32)
KEY_B64 = base64.b64encode(KEY).decode()
OFFER = subjects.ingress_rpc("webrtc", "offer")


@pytest.fixture(scope="module")
def nats_server() -> Iterator[str]:
    with embedded_nats() as url:
        yield url


@dataclass
class Stack:
    control: ControlApiService
    http: httpx.AsyncClient
    replicas: list[IngressService]
    bus: Bus
    seen: list[Envelope[Any]]

    def events(self, kind: type, call_id: str) -> list[Envelope[Any]]:
        return [e for e in self.seen if isinstance(e.data, kind) and e.call_id == call_id]

    async def wait(self, kind: type, call_id: str, timeout: float = 15.0) -> Envelope[Any]:
        async with asyncio.timeout(timeout):
            while not self.events(kind, call_id):
                await asyncio.sleep(0.05)
        return self.events(kind, call_id)[0]

    @property
    def endpoints(self) -> list[WebRtcEndpoint]:
        return [e for r in self.replicas for e in r.endpoints if isinstance(e, WebRtcEndpoint)]


@pytest.fixture(scope="module")
async def stack(nats_server: str, database_url: str) -> AsyncIterator[Stack]:
    control = ControlApiService(make_settings(database_url, nats_server, call_token_key=SecretStr(KEY_B64)))
    replicas = [
        IngressService(
            IngressSettings(
                nats_url=nats_server,
                call_token_key=SecretStr(KEY_B64),
                webrtc_loopback_candidate=True,
                start_timeout_s=5.0,
                log_level="WARNING",
            )
        )
        for _ in range(2)
    ]
    analytics = AnalyticsService(AnalyticsSettings(nats_url=nats_server, database_url=database_url))
    app = control.app()
    async with app.router.lifespan_context(app):
        for r in replicas:
            await r.start()
        await analytics.start()
        bus = await Bus.connect(nats_server, "test")
        seen: list[Envelope[Any]] = []

        async def on_event(msg: Any) -> None:
            with contextlib.suppress(Exception):
                seen.append(parse(msg.data))

        await bus.subscribe(subjects.any_call("lifecycle", ">"), on_event)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://control-api.test") as http:
                yield Stack(control, http, replicas, bus, seen)
        finally:
            await bus.close()
            await analytics.stop()
            for r in replicas:
                await r.stop()


@dataclass
class Tenant:
    admin: dict[str, str]
    sup: dict[str, str]  # a supervisor's key: they own `sup_agent`, not `agent`
    agent: str
    sup_agent: str
    id: str


async def tenant(http: httpx.AsyncClient, name: str) -> Tenant:
    t = await populate(http, name)
    admin, sup = bearer(t.admin_key), bearer(t.sup_key)
    agent = await ok(await http.post("/v1/agents", json={"name": "desk", "first_message": "Hello!"}, headers=admin))
    sup_agent = await ok(await http.post("/v1/agents", json={"name": "mine"}, headers=sup))
    return Tenant(admin, sup, agent["id"], sup_agent["id"], t.id)


@pytest.fixture(scope="module")
async def tenants(stack: Stack) -> dict[str, Tenant]:
    return {n: await tenant(stack.http, f"webrtc {n} {secrets.token_hex(3)}") for n in ("A", "B")}


@contextlib.asynccontextmanager
async def browser() -> AsyncIterator[tuple[BrowserPeer, dict[str, str]]]:
    peer = BrowserPeer()
    try:
        yield peer, await peer.offer()
    finally:
        await peer.close()


async def test_a_web_call_through_control_api_is_a_normal_call(stack: Stack, tenants: dict[str, Tenant]) -> None:
    a, b = tenants["A"], tenants["B"]
    async with browser() as (peer, offer):
        r = await stack.http.post(f"/v1/agents/{a.agent}/web-calls", json=offer, headers=a.admin)
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["type"] == "answer" and "a=candidate" in body["sdp"] and "opus" in body["sdp"].lower()
        call_id = body["call_id"]
        assert r.headers["location"] == f"/v1/calls/{call_id}"
        started = await stack.wait(events.CallStarted, call_id)
        assert started.tenant_id == a.id and started.data.agent_id == a.agent
        assert started.data.channel == events.Channel.webrtc
        await peer.accept(body["sdp"])
        await peer.wait_connected()
        await stack.wait(events.CallAnswered, call_id)

        # hanging up: another tenant's or a supervisor not owning its agent get "not found"; nothing ends
        r = await stack.http.delete(f"/v1/web-calls/{call_id}", headers=b.admin)
        assert "web call not found" in problem(r, 404)["detail"]
        r = await stack.http.delete(f"/v1/web-calls/{call_id}", headers=a.sup)
        problem(r, 404)
        await asyncio.sleep(0.5)
        assert not stack.events(events.CallEnded, call_id)
        r = await stack.http.delete(f"/v1/web-calls/{call_id}", headers=a.admin)
        assert r.status_code == 204, r.text
        ended = await stack.wait(events.CallEnded, call_id)
        assert ended.data.reason == events.EndReason.caller_hangup
        await asyncio.wait_for(peer.ended.wait(), 15)  # ingress closed the browser's connection

    # the calls API shows it: channel, agent, end reason
    async def recorded() -> dict[str, Any] | None:
        got = await stack.http.get(f"/v1/calls/{call_id}", headers=a.admin)
        return got.json() if got.status_code == 200 and got.json().get("end_reason") else None

    async with asyncio.timeout(20):
        while (call := await recorded()) is None:
            await asyncio.sleep(0.2)
    assert call["channel"] == "webrtc" and call["agent_id"] == a.agent and call["end_reason"] == "caller_hangup"
    assert call["from_number"] is None and call["to_number"] is None
    r = await stack.http.get(f"/v1/calls/{call_id}", headers=b.admin)
    problem(r, 404)
    # hanging up an ended call changes nothing; another tenant still gets "not found"
    assert (await stack.http.delete(f"/v1/web-calls/{call_id}", headers=a.admin)).status_code == 204
    problem(await stack.http.delete(f"/v1/web-calls/{call_id}", headers=b.admin), 404)
    problem(await stack.http.delete("/v1/web-calls/CAnosuchcall", headers=a.admin), 404)


async def test_who_may_start_a_web_call(stack: Stack, tenants: dict[str, Tenant]) -> None:
    a, b = tenants["A"], tenants["B"]
    async with browser() as (_, offer):
        url = f"/v1/agents/{a.agent}/web-calls"
        problem(await stack.http.post(url, json=offer), 401)
        problem(await stack.http.post(url, json=offer, headers=bearer("vk_not-a-real-key-at-all")), 401)
        assert "agent not found" in problem(await stack.http.post(url, json=offer, headers=b.admin), 404)["detail"]
        problem(await stack.http.post(url, json=offer, headers=a.sup), 404)  # a supervisor not owning it
        r = await stack.http.post(f"/v1/agents/{a.sup_agent}/web-calls", json=offer, headers=a.sup)
        assert r.status_code == 201, r.text  # the supervisor owning it
        # bad bodies: checked by control-api, or by ingress (no audio section)
        problem(await stack.http.post(url, json={"type": "answer", "sdp": offer["sdp"]}, headers=a.admin), 422)
        problem(await stack.http.post(url, json={"type": "offer", "sdp": "v=0" * 20_000}, headers=a.admin), 422)
        no_audio = "\r\n".join(ln for ln in offer["sdp"].split("\r\n") if not ln.startswith("m=audio"))
        r = await stack.http.post(url, json={"type": "offer", "sdp": no_audio}, headers=a.admin)
        assert "audio section" in problem(r, 422)["detail"]
        # an inactive agent takes no calls
        await ok(await stack.http.patch(f"/v1/agents/{a.sup_agent}", json={"is_active": False}, headers=a.admin))
        r = await stack.http.post(f"/v1/agents/{a.sup_agent}/web-calls", json=offer, headers=a.admin)
        assert "not active" in problem(r, 409)["detail"]


async def test_control_api_answers_clearly_when_ingress_cannot(
    stack: Stack, tenants: dict[str, Tenant], monkeypatch: pytest.MonkeyPatch
) -> None:
    a = tenants["A"]
    url = f"/v1/agents/{a.agent}/web-calls"
    ctx = stack.control.ctx
    assert ctx is not None
    async with browser() as (_, offer):
        # no CALL_TOKEN_KEY in control-api
        monkeypatch.setattr(ctx, "settings", ctx.settings.model_copy(update={"call_token_key": None}))
        body = problem(await stack.http.post(url, json=offer, headers=a.admin), 503)
        assert "CALL_TOKEN_KEY" in body["detail"] and body["type"].endswith("/not-configured")
        monkeypatch.undo()
        # no ingress serving browser calls
        for e in stack.endpoints:
            await e.stop()
        try:
            body = problem(await stack.http.post(url, json=offer, headers=a.admin), 503)
            assert body["detail"] == "no ingress is serving browser calls"

            # an ingress that does not answer in time
            async def never_answer(msg: Any) -> None:
                pass

            silent = await stack.bus.subscribe(OFFER, never_answer, queue="ingress-webrtc")
            monkeypatch.setattr(web_calls, "OFFER_TIMEOUT_S", 0.5)
            body = problem(await stack.http.post(url, json=offer, headers=a.admin), 504)
            assert "in time" in body["detail"]
            await silent.unsubscribe()
        finally:
            for e in stack.endpoints:
                await e.start()


async def request(stack: Stack, body: dict[str, Any]) -> WebRtcAnswer:
    return WebRtcAnswer.model_validate_json(await stack.bus.request(OFFER, _json(body), timeout=20))


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


async def test_ingress_refuses_offers_without_a_valid_unused_grant(stack: Stack, tenants: dict[str, Tenant]) -> None:
    a = tenants["A"]

    def token(**kw: Any) -> str:
        claims = {"tenant_id": a.id, "agent_id": a.agent, "channel": "webrtc", **kw}
        return calltoken.mint(kw.pop("key", KEY), **{k: v for k, v in claims.items() if k != "key"})[0]

    async with browser() as (_, offer):
        refused = {
            "no token": ({**offer}, WebRtcError.invalid, "token"),
            "forged": ({"token": token(key=secrets.token_bytes(32)), **offer}, WebRtcError.refused, "signature"),
            "tampered": ({"token": "x" + token(), **offer}, WebRtcError.refused, ""),
            "expired": ({"token": token(ttl_s=0.001), **offer}, WebRtcError.refused, "expired"),
            "chat token": ({"token": token(channel="chat"), **offer}, WebRtcError.refused, "another channel"),
            "other tenant": ({"token": token(tenant_id=tenants["B"].id), **offer}, WebRtcError.not_found, "agent"),
        }
        for name, (body, error, detail) in refused.items():
            answer = await request(stack, body)
            assert answer.error == error and detail in (answer.detail or ""), (name, answer)
            assert answer.call_id is None

        # one grant, one call, whichever replica takes it: replica 1 through the bus, then replica 2 directly
        grant = token()
        first = await request(stack, {"token": grant, **offer})
        assert first.error is None and first.call_id
        again = await request(stack, {"token": grant, **offer})
        assert again.error == WebRtcError.refused and again.detail == "call token already used"
        for endpoint in stack.endpoints:
            with pytest.raises(Exception, match="already used"):
                await endpoint.offer(_json({"token": grant, **offer}))
        started = [
            e
            for e in stack.seen
            if isinstance(e.data, events.CallStarted)
            and e.data.provider_call_id
            and e.tenant_id == a.id
            and e.call_id == first.call_id
        ]
        assert len(started) == 1
