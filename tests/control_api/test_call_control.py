"""Call control through the API (end a live call, transfer it) and the transfer allow-list, end to end over real
NATS (a server of this module's own) and PostgreSQL: control-api, ingress (behind a real HTTP server, Twilio calls
placed by the Twilio-style caller) and analytics (which stores how each call ended) in process, and the Twilio REST
test double on a real port.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from pydantic import SecretStr
from voice_analytics.service import AnalyticsService
from voice_analytics.settings import AnalyticsSettings
from voice_control_api.service import ControlApiService
from voice_control_api.usecases.transfers import parse_pattern, permits
from voice_devstack.stack import embedded_nats
from voice_ingress.service import IngressService
from voice_ingress.settings import IngressSettings
from voice_ingress.twilio_rest import dial_twiml
from voice_runtime.bus import Bus
from voice_schemas import Envelope, events, parse, subjects

from bench.twilio_caller import TwilioCaller

from ..conftest import free_port
from ..doubles.twilio_rest import Recorded, TwilioRestDouble
from ..waiting import until
from .conftest import make_settings
from .helpers import TenantCreds, bearer, insert_call, ok, populate, problem, unique_number

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TOKEN = "twilio-call-control-token"
PUBLIC = "https://voice.example.test"
ACCOUNT = "AC" + "0" * 32  # the account the Twilio-style caller's stream names
KEY = base64.b64encode(os.urandom(32)).decode()


# ---------------------------------------------------------------- the allow-list rules (pure)
@pytest.mark.unit
@pytest.mark.parametrize(
    "pattern,normal",
    [
        ("+4930*", "+4930*"),
        ("+49 30*", "+4930*"),
        ("+1 (415) 555-0100", "+14155550100"),
        ("SIP:Desk@PBX.Example.com:5060;transport=tcp", "sip:Desk@pbx.example.com:5060;transport=tcp"),
        ("sips:ops@10.0.0.5", "sips:ops@10.0.0.5"),
    ],
)
def test_patterns_are_normalised(pattern: str, normal: str) -> None:
    assert parse_pattern(pattern) == normal


@pytest.mark.unit
@pytest.mark.parametrize(
    "bad", ["*", "+*", "4930*", "+49*30", "+0*", "030 1234567", "sip:pbx.example.com", "sip:a b@x", "tel:+4930",
            "sip:<a>@x", "sip:a@x:99999", "sip:a@x?subject=y", ""]
)
def test_invalid_patterns_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_pattern(bad)


@pytest.mark.unit
def test_permits_matches_exact_numbers_prefixes_and_sip_uris() -> None:
    allow = [parse_pattern(p) for p in ("+4930*", "+14155550100", "sip:desk@pbx.example.com")]
    assert permits(allow, "+493012345678") and permits(allow, "+49 30 1234 5678")
    assert permits(allow, "+14155550100") and permits(allow, "+1 415 555 0100")
    assert permits(allow, "sip:desk@PBX.example.com") and permits(allow, "SIP:desk@pbx.example.com")
    assert not permits(allow, "+494012345678")  # another prefix
    assert not permits(allow, "+14155550101")  # exact means exact
    assert not permits(allow, "sip:Desk@pbx.example.com")  # the user part is case-sensitive
    assert not permits(allow, "sip:desk@pbx.example.com;transport=tcp")
    assert not permits(allow, "sip:desk@evil.example.com")
    assert not permits(allow, "premium-rate") and not permits(allow, "")
    assert not permits([], "+493012345678")  # an empty list allows nothing


# ---------------------------------------------------------------- the platform
@dataclass
class World:
    api: httpx.AsyncClient
    bus: Bus
    db: asyncpg.Connection
    twilio: TwilioRestDouble
    ingress_url: str
    seen: list[Envelope[Any]]

    def of(self, kind: type, call_id: str) -> list[Any]:
        return [e.data for e in self.seen if isinstance(e.data, kind) and e.call_id == call_id]

    async def wait(self, kind: type, call_id: str) -> Any:
        return (await until(lambda: _now(self.of(kind, call_id)), f"{kind.__name__} of {call_id}", 30))[0]

    async def ended_row(self, call_id: str) -> asyncpg.Record:
        async def row() -> asyncpg.Record | None:
            return await self.db.fetchrow("SELECT * FROM calls WHERE id = $1 AND status = 'ended'", call_id)

        return await until(row, f"the stored end of {call_id}", 30)


async def _now(value: Any) -> Any:
    return value


@contextlib.asynccontextmanager
async def serve(app: Any, port: int) -> AsyncIterator[None]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_config=None,
                                           access_log=False))
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the server did not start"
        await asyncio.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


@pytest.fixture(scope="module")
async def world(database_url: str) -> AsyncIterator[World]:
    twilio = TwilioRestDouble(account_sid=ACCOUNT, auth_token=TOKEN)
    ingress_port = free_port()
    with embedded_nats() as nats_url:
        async with twilio.running():
            control = ControlApiService(make_settings(database_url, nats_url, call_token_key=SecretStr(KEY)))
            ingress = IngressService(IngressSettings(
                nats_url=nats_url, public_base_url=PUBLIC, twilio_auth_token=SecretStr(TOKEN),
                twilio_allow_unsigned=False, twilio_account_sid=ACCOUNT, twilio_api_base_url=twilio.base_url,
                call_token_key=SecretStr(KEY), start_timeout_s=5.0, log_level="WARNING",
            ))
            analytics = AnalyticsService(AnalyticsSettings(nats_url=nats_url, database_url=database_url,
                                                           log_level="WARNING"))
            app = control.app()
            async with app.router.lifespan_context(app):
                await ingress.start()
                await analytics.start()
                bus = await Bus.connect(nats_url, "test")
                db = await asyncpg.connect(database_url)
                seen: list[Envelope[Any]] = []

                async def on_event(msg: Any) -> None:
                    with contextlib.suppress(Exception):
                        seen.append(parse(msg.data))

                await bus.subscribe("call.>", on_event)
                transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
                try:
                    async with (
                        serve(ingress.app(), ingress_port),
                        httpx.AsyncClient(transport=transport, base_url="http://control-api.test") as api,
                    ):
                        yield World(api, bus, db, twilio, f"http://127.0.0.1:{ingress_port}", seen)
                finally:
                    await db.close()
                    await bus.close()
                    await analytics.stop()
                    await ingress.stop()


@dataclass
class Tenant:
    creds: TenantCreds
    admin: dict[str, str]
    sup: dict[str, str]  # owns `sup_agent`, not `agent`
    sup2: dict[str, str]  # another supervisor: owns neither
    agent: str
    sup_agent: str
    number: str  # routes to `agent`
    sup_number: str  # routes to `sup_agent`


async def tenant(w: World, name: str) -> Tenant:
    t = await populate(w.api, name)
    admin, sup = bearer(t.admin_key), bearer(t.sup_jwt)
    agent = await ok(await w.api.post("/v1/agents", json={"name": "desk", "first_message": None}, headers=admin))
    sup_agent = await ok(await w.api.post("/v1/agents", json={"name": "mine", "first_message": None}, headers=sup))
    numbers = []
    for a in (agent, sup_agent):
        n = await ok(await w.api.post("/v1/phone-numbers", json={"number": unique_number(), "agent_id": a["id"]},
                                      headers=admin))
        numbers.append(n["number"])
    sup2_key = await ok(await w.api.post("/v1/api-keys", json={"name": "sup2", "role": "supervisor",
                                                               "user_id": t.sup2_user}, headers=admin), 201)
    return Tenant(t, admin, sup, bearer(sup2_key["key"]), agent["id"], sup_agent["id"], numbers[0], numbers[1])


@pytest.fixture(scope="module")
async def tenants(world: World) -> dict[str, Tenant]:
    return {n: await tenant(world, f"call control {n} {os.urandom(3).hex()}") for n in ("A", "B")}


async def twilio_call(w: World, number: str) -> TwilioCaller:
    """A live Twilio call to ``number``, which Twilio (the double) knows."""
    c = TwilioCaller(w.ingress_url, auth_token=TOKEN, public_base_url=PUBLIC, to=number)
    w.twilio.add_call(c.call_sid, to=number)

    async def dialled() -> str | None:
        with contextlib.suppress(RuntimeError):  # the number reaches ingress's KV shortly after the API wrote it
            return await c.dial()
        return None

    await until(dialled, f"a call to {number} routed")
    await c.connect()
    await w.wait(events.CallAnswered, c.call_id or "")
    return c


async def allow(w: World, t: Tenant, *patterns: str) -> list[str]:
    body = await ok(await w.api.put(f"/v1/tenants/{t.creds.id}/transfer-allow-list", json={"patterns": list(patterns)},
                                    headers=t.admin))
    patterns_now: list[str] = body["patterns"]
    return patterns_now


# ---------------------------------------------------------------- end a live call
async def test_ending_a_live_twilio_call_stores_reason_supervisor(world: World, tenants: dict[str, Tenant]) -> None:
    w, a = world, tenants["A"]
    c = await twilio_call(w, a.number)
    call_id = c.call_id or ""
    r = await ok(await w.api.post(f"/v1/calls/{call_id}/end", json={"reason": "abusive caller"}, headers=a.admin),
                 202)
    assert r["call_id"] == call_id and r["event_id"]
    assert await c.wait_closed(15), "ingress did not close the media stream"
    row = await w.ended_row(call_id)
    assert row["end_reason"] == "supervisor"
    [hangup] = w.of(events.HangUp, call_id)
    assert hangup == events.HangUp(reason=events.EndReason.supervisor, after_playout=False)
    audit = await ok(await w.api.get("/v1/audit-log", params={"action": "call.end"}, headers=a.admin))
    [entry] = [e for e in audit["items"] if e["resource_id"] == call_id]
    assert entry["details"]["note"] == "abusive caller" and entry["details"]["event_id"] == r["event_id"]
    # ended now: a second end is a conflict
    problem(await w.api.post(f"/v1/calls/{call_id}/end", headers=a.admin), 409)


async def test_who_may_end_a_call(world: World, tenants: dict[str, Tenant], database_url: str) -> None:
    w, a, b = world, tenants["A"], tenants["B"]
    c = await twilio_call(w, a.sup_number)  # a call of the supervisor's own agent
    call_id = c.call_id or ""
    for who in (b.admin, a.sup2):  # another tenant's admin, a supervisor of other agents: a plain 404
        problem(await w.api.post(f"/v1/calls/{call_id}/end", headers=who), 404)
        problem(await w.api.post(f"/v1/calls/{call_id}/transfer", json={"to": "+493012345678"}, headers=who), 404)
    problem(await w.api.post(f"/v1/calls/{call_id}/end"), 401)
    problem(await w.api.post(f"/v1/calls/{call_id}/end", json={"reason": "x" * 201}, headers=a.sup), 422)
    problem(await w.api.post(f"/v1/calls/{call_id}/end", json={"unknown": 1}, headers=a.sup), 422)
    assert not w.of(events.HangUp, call_id) and not c.closed
    await ok(await w.api.post(f"/v1/calls/{call_id}/end", headers=a.sup), 202)  # no body: allowed
    assert (await w.ended_row(call_id))["end_reason"] == "supervisor"
    # another agent's live call stays out of the supervisor's reach
    other = await twilio_call(w, a.number)
    problem(await w.api.post(f"/v1/calls/{other.call_id}/end", headers=a.sup), 404)
    await other.hangup()
    # a stored call that has ended: 409; an unknown id: 404
    stored = await insert_call(database_url, tenant_id=a.creds.id, agent_id=a.agent, status="ended")
    problem(await w.api.post(f"/v1/calls/{stored}/end", headers=a.admin), 409)
    problem(await w.api.post(f"/v1/calls/{subjects.new_call_id()}/end", headers=a.admin), 404)


# ---------------------------------------------------------------- transfer
async def test_transferring_a_twilio_call_redirects_it_and_it_ends_transferred(
    world: World, tenants: dict[str, Tenant]
) -> None:
    w, a = world, tenants["A"]
    assert await allow(w, a, "+49 30*", "sip:desk@pbx.example.com") == ["+4930*", "sip:desk@pbx.example.com"]
    c = await twilio_call(w, a.number)
    call_id = c.call_id or ""

    async def twilio_stops_the_stream(_: Recorded) -> None:  # as Twilio does once it redirects the call
        await c.hangup()
        return None

    w.twilio.on_update = twilio_stops_the_stream
    try:
        r = await ok(await w.api.post(f"/v1/calls/{call_id}/transfer", json={"to": "+49 30 1234 5678"},
                                      headers=a.admin), 202)
        row = await w.ended_row(call_id)
    finally:
        w.twilio.on_update = None
    assert row["end_reason"] == "transferred"
    [update] = w.twilio.updates(c.call_sid)
    assert update.auth == (ACCOUNT, TOKEN) and update.status == 200
    assert update.param("Twiml") == dial_twiml("+493012345678")
    [cmd] = w.of(events.Transfer, call_id)
    assert cmd == events.Transfer(target="+493012345678", after_playout=False, requested_by="supervisor")
    assert not w.of(events.TransferFailed, call_id)
    audit = await ok(await w.api.get("/v1/audit-log", params={"action": "call.transfer"}, headers=a.admin))
    [entry] = [e for e in audit["items"] if e["resource_id"] == call_id]
    assert entry["details"] == {"event_id": r["event_id"], "destination": "number"}
    assert "4930" not in str(audit)  # never the number


async def test_a_destination_off_the_allow_list_is_refused_and_nothing_is_sent(
    world: World, tenants: dict[str, Tenant]
) -> None:
    w, a, b = world, tenants["A"], tenants["B"]
    await allow(w, a, "+4930*")
    await allow(w, b, "+44*")  # another tenant's list does not count for A
    c = await twilio_call(w, a.number)
    call_id = c.call_id or ""
    url = f"/v1/calls/{call_id}/transfer"
    for to in ("+442071234567", "+49401234567", "sip:desk@pbx.example.com"):
        p = problem(await w.api.post(url, json={"to": to}, headers=a.admin), 403)
        assert "allow-list" in p["detail"]
    p = problem(await w.api.post(url, json={"to": "0900 premium"}, headers=a.admin), 422)
    assert p["errors"][0]["field"] == "body.to"
    problem(await w.api.post(url, json={}, headers=a.admin), 422)
    # the whisper after them arrives; no transfer came before it (one publisher: order is kept)
    await ok(await w.api.post(f"/v1/calls/{call_id}/whisper", json={"text": "marker"}, headers=a.admin), 202)
    await w.wait(events.SupervisorWhispered, call_id)
    assert not w.of(events.Transfer, call_id) and not w.twilio.updates(c.call_sid)
    audit = await ok(await w.api.get("/v1/audit-log", params={"action": "call.transfer"}, headers=a.admin))
    assert not [e for e in audit["items"] if e["resource_id"] == call_id]
    # an empty list allows nothing
    await allow(w, a)
    problem(await w.api.post(url, json={"to": "+493012345678"}, headers=a.admin), 403)
    await c.hangup()


async def test_twilio_refusing_gives_transfer_failed_and_the_call_goes_on(
    world: World, tenants: dict[str, Tenant]
) -> None:
    w, a = world, tenants["A"]
    await allow(w, a, "+4930*")
    c = await twilio_call(w, a.sup_number)
    call_id = c.call_id or ""
    w.twilio.fail_next(500)
    await ok(await w.api.post(f"/v1/calls/{call_id}/transfer", json={"to": "+493012345678"}, headers=a.sup), 202)
    failed = await w.wait(events.TransferFailed, call_id)
    assert "HTTP 500" in failed.reason and failed.requested_by == "supervisor"
    w.twilio.calls.pop(c.call_sid)  # Twilio no longer knows the call: 404
    await ok(await w.api.post(f"/v1/calls/{call_id}/transfer", json={"to": "+493012345678"}, headers=a.sup), 202)
    await until(lambda: _now(len(w.of(events.TransferFailed, call_id)) == 2), "the second transfer_failed")
    assert "error 20404" in w.of(events.TransferFailed, call_id)[1].reason
    # the call goes on: still live, and the supervisor can still end it
    assert not c.closed and not w.of(events.CallEnded, call_id)
    await ok(await w.api.post(f"/v1/calls/{call_id}/end", headers=a.sup), 202)
    assert (await w.ended_row(call_id))["end_reason"] == "supervisor"


async def test_a_chat_cannot_be_transferred(world: World, tenants: dict[str, Tenant]) -> None:
    w, a = world, tenants["A"]
    await allow(w, a, "+4930*")
    chat = await ok(await w.api.post(f"/v1/agents/{a.agent}/chats", headers=a.admin), 201)
    call_id = chat["call_id"]
    await ok(await w.api.post(f"/v1/calls/{call_id}/transfer", json={"to": "+493012345678"}, headers=a.admin), 202)
    failed = await w.wait(events.TransferFailed, call_id)
    assert failed == events.TransferFailed(reason="transport cannot transfer", requested_by="supervisor")
    assert not w.of(events.CallEnded, call_id)
    await ok(await w.api.post(f"/v1/calls/{call_id}/end", headers=a.admin), 202)
    assert (await w.ended_row(call_id))["end_reason"] == "supervisor"


# ---------------------------------------------------------------- the allow-list API
async def test_the_allow_list_is_the_tenant_admins_to_manage(world: World, tenants: dict[str, Tenant]) -> None:
    w, a, b = world, tenants["A"], tenants["B"]
    url = f"/v1/tenants/{a.creds.id}/transfer-allow-list"
    assert await allow(w, a, "+4930*", "+49 30*", "+1 415 555 0100") == ["+4930*", "+14155550100"]
    assert (await ok(await w.api.get(url, headers=a.sup)))["patterns"] == ["+4930*", "+14155550100"]
    problem(await w.api.put(url, json={"patterns": ["+44*"]}, headers=a.sup), 403)
    problem(await w.api.get(url, headers=b.admin), 404)
    problem(await w.api.put(url, json={"patterns": ["+44*"]}, headers=b.admin), 404)
    p = problem(await w.api.put(url, json={"patterns": ["+44*", "+*"]}, headers=a.admin), 422)
    assert p["errors"][0]["field"] == "body.patterns[1]"
    problem(await w.api.put(url, json={"patterns": ["+4930*"] * 201}, headers=a.admin), 422)
    problem(await w.api.put(url, json={"patterns": "+4930*"}, headers=a.admin), 422)
    assert (await ok(await w.api.get(url, headers=a.admin)))["patterns"] == ["+4930*", "+14155550100"]  # unchanged
    audit = await ok(await w.api.get("/v1/audit-log", params={"action": "tenant.transfer_allow_list.update"},
                                     headers=a.admin))
    assert audit["items"][0]["details"]["entries"] == 2 and "4930" not in str(audit)
