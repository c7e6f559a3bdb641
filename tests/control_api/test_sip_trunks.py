"""SIP trunks per tenant (CRUD, validation, KV mirror, isolation) and outbound calls through the API (the
allow-list against toll fraud, and the DialRequest control-api sends to ingress over real NATS)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from nats.js.errors import KeyNotFoundError
from voice_control_api.service import ControlApiService
from voice_runtime.handlers import Message
from voice_schemas import events, subjects
from voice_schemas.agent import SipTrunk

from .helpers import TenantCreds, bearer, ok, populate, problem, unique_number

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def tenants(client: httpx.AsyncClient) -> tuple[TenantCreds, TenantCreds]:
    return await populate(client, "trunks A"), await populate(client, "trunks B")


async def kv_trunk(service: ControlApiService, trunk_id: str) -> dict[str, Any] | None:
    try:
        entry = await service.kv["trunks"].get(subjects.trunk_key(trunk_id))
    except KeyNotFoundError:
        return None
    return json.loads(entry.value) if entry.value else None


async def test_trunk_crud_kv_mirror_and_isolation(
    client: httpx.AsyncClient, service: ControlApiService, tenants: tuple[TenantCreds, TenantCreds]
) -> None:
    a, b = tenants
    admin = bearer(a.admin_key)
    await ok(await client.put("/v1/secrets/pbx_pw", json={"value": "inbound-pw"}, headers=admin))
    await ok(await client.put("/v1/secrets/carrier_pw", json={"value": "outbound-pw"}, headers=admin))
    body = {
        "name": "carrier",
        "inbound_sources": ["203.0.113.7", "198.51.100.0/24"],
        "inbound_username": "pbx",
        "inbound_password_secret": "pbx_pw",
        "number_rules": [{"match": "0(\\d{6,14})", "replace": "+49\\1"}],
        "outbound_proxy": "sip.carrier.example:5080",
        "outbound_username": "acct",
        "outbound_password_secret": "carrier_pw",
        "outbound_caller_id": "+49 30 1234567",
    }
    r = await client.post("/v1/sip-trunks", json=body, headers=admin)
    trunk = await ok(r, 201)
    assert r.headers["location"] == f"/v1/sip-trunks/{trunk['id']}"
    assert trunk["inbound_sources"] == ["203.0.113.7/32", "198.51.100.0/24"]
    assert trunk["outbound_caller_id"] == "+49301234567" and trunk["digest_algorithms"] == ["SHA-256", "MD5"]
    assert "inbound-pw" not in r.text and "outbound-pw" not in r.text  # secret names only, never values

    mirrored = await kv_trunk(service, trunk["id"])
    assert mirrored is not None
    parsed = SipTrunk.model_validate(mirrored)  # ingress's own contract reads it
    assert (parsed.tenant_id, parsed.inbound_password_secret, parsed.outbound_proxy) == (
        a.id, "pbx_pw", "sip.carrier.example:5080")
    assert parsed.number_rules[0].match == "0(\\d{6,14})"

    patched = await ok(await client.patch(f"/v1/sip-trunks/{trunk['id']}",
                                          json={"supports_refer": False, "version": 1}, headers=admin))
    assert patched["version"] == 2 and patched["supports_refer"] is False and patched["inbound_username"] == "pbx"
    assert (await kv_trunk(service, trunk["id"]) or {})["supports_refer"] is False
    # a secret a trunk uses cannot be deleted
    assert "SIP trunks use this secret" in problem(await client.delete("/v1/secrets/pbx_pw", headers=admin), 409)[
        "detail"]

    # another tenant: 404 everywhere, and its list does not show the trunk
    other = bearer(b.admin_key)
    for method in ("GET", "DELETE"):
        problem(await client.request(method, f"/v1/sip-trunks/{trunk['id']}", headers=other), 404)
    problem(await client.patch(f"/v1/sip-trunks/{trunk['id']}", json={"name": "x"}, headers=other), 404)
    assert trunk["id"] not in (await client.get("/v1/sip-trunks", headers=other)).text
    # nor may it reference A's secrets (names are per tenant)
    problem(await client.post("/v1/sip-trunks", json={**body, "name": "b"}, headers=other), 422)
    # supervisors do not manage trunks
    problem(await client.get("/v1/sip-trunks", headers=bearer(a.sup_key)), 403)

    listed = await ok(await client.get("/v1/sip-trunks", headers=admin))
    assert [t["id"] for t in listed["items"]] == [trunk["id"]]
    audit = await ok(await client.get("/v1/audit-log", params={"resource_type": "sip_trunk"}, headers=admin))
    assert [e["action"] for e in audit["items"]][:2] == ["sip_trunk.update", "sip_trunk.create"]

    # a lost KV key comes back with the resync; deleting removes it
    await service.kv["trunks"].delete(subjects.trunk_key(trunk["id"]))
    await service.resync()
    assert await kv_trunk(service, trunk["id"]) is not None
    await ok(await client.delete(f"/v1/sip-trunks/{trunk['id']}", headers=admin), 204)
    assert await kv_trunk(service, trunk["id"]) is None
    problem(await client.get(f"/v1/sip-trunks/{trunk['id']}", headers=admin), 404)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"inbound_sources": ["10.0.0.0/33"]}, "inbound_sources"),
        ({"inbound_sources": ["not-an-ip"]}, "inbound_sources"),
        ({"number_rules": [{"match": "0(\\d+", "replace": "+49\\1"}]}, "number_rules"),
        ({"number_rules": [{"match": "0\\d+", "replace": "+49\\1"}]}, "number_rules"),  # no group 1
        ({"number_rules": [{"match": "0(\\d{1,3})+", "replace": "+49\\1"}]}, "number_rules"),  # can backtrack
        ({"inbound_username": "pbx", "inbound_password_secret": "no_such_secret"}, "inbound_password_secret"),
        ({"inbound_username": "pbx"}, "body"),  # a user without its password
        ({"outbound_proxy": "bad host!"}, "outbound_proxy"),
        ({"outbound_proxy": "127.0.0.1:5060"}, "outbound_proxy"),  # internal, not allow-listed
        ({"outbound_caller_id": "0301234567"}, "outbound_caller_id"),
        ({"digest_algorithms": ["SHA-1"]}, "digest_algorithms"),
    ],
)
async def test_trunk_validation_names_the_field(
    client: httpx.AsyncClient, tenants: tuple[TenantCreds, TenantCreds], change: dict[str, Any], field: str
) -> None:
    r = await client.post("/v1/sip-trunks", json={"name": "bad", **change}, headers=bearer(tenants[0].admin_key))
    body = problem(r, 422)
    assert any(field in e["field"] for e in body["errors"]), body


async def test_outbound_allow_list_and_refusals(
    client: httpx.AsyncClient, tenants: tuple[TenantCreds, TenantCreds]
) -> None:
    a, b = tenants
    admin = bearer(a.admin_key)
    agent = await ok(await client.post("/v1/agents", json={"name": "caller"}, headers=admin), 201)
    url = f"/v1/tenants/{a.id}/outbound-allow-list"
    assert (await ok(await client.get(url, headers=admin)))["patterns"] == []
    call = {"agent_id": agent["id"], "to": "+14155550100", "from": unique_number()}
    assert "allow-list" in problem(await client.post("/v1/calls", json=call, headers=admin), 403)["detail"]

    stored = await ok(await client.put(url, json={"patterns": ["+1 415*", "+1*", "+1415*"]}, headers=admin))
    assert stored["patterns"] == ["+1415*", "+1*"]
    assert problem(await client.put(url, json={"patterns": ["+49*30"]}, headers=admin), 422)["errors"][0][
        "field"].endswith("patterns[0]")
    problem(await client.put(url, json={"patterns": ["+1*"]}, headers=bearer(a.sup_key)), 403)
    problem(await client.get(url, headers=bearer(b.admin_key)), 404)

    # premium-rate numbers are refused even under a listed prefix; so are numbers of unknown format
    for to in ("+19005551234", "+15551234567"):
        assert "premium-rate" in problem(
            await client.post("/v1/calls", json={**call, "to": to}, headers=admin), 403)["detail"]
    problem(await client.post("/v1/calls", json={**call, "to": "0301234"}, headers=admin), 422)
    # the caller id must be one of the tenant's numbers; a SIP call needs a trunk of the tenant
    assert problem(await client.post("/v1/calls", json=call, headers=admin), 422)["errors"][0]["field"].endswith("from")
    problem(await client.post("/v1/calls", json={**call, "channel": "sip"}, headers=admin), 422)
    r = await client.post("/v1/calls", json={**call, "channel": "sip", "trunk_id": "nope"}, headers=admin)
    assert problem(r, 422)["errors"][0]["field"].endswith("trunk_id")
    # another tenant's agent is a plain 404
    problem(await client.post("/v1/calls", json=call, headers=bearer(b.admin_key)), 404)


async def test_outbound_call_sends_a_dial_request_to_ingress(
    client: httpx.AsyncClient, service: ControlApiService, tenants: tuple[TenantCreds, TenantCreds]
) -> None:
    a, _ = tenants
    admin = bearer(a.admin_key)
    agent = await ok(await client.post(
        "/v1/agents", json={"name": "dialer", "outbound": {"speaks_first": False, "machine_detection": "message"}},
        headers=admin), 201)
    number = await ok(await client.post(
        "/v1/phone-numbers", json={"number": "+14155550177", "agent_id": agent["id"]}, headers=admin), 201)
    await ok(await client.put(f"/v1/tenants/{a.id}/outbound-allow-list", json={"patterns": ["+1415*"]},
                              headers=admin))
    asked: list[events.DialRequest] = []

    async def ingress(msg: Message) -> None:  # one ingress replica answering on the real bus
        asked.append(events.DialRequest.model_validate_json(msg.data))
        reply = events.DialReply(accepted=len(asked) == 1, detail="" if len(asked) == 1 else "no Twilio account")
        await service.bus.publish_nowait(msg.reply, reply.model_dump_json().encode())

    assert service.bus is not None
    sub = await service.bus.subscribe(subjects.ingress_rpc("dial", "place"), ingress, queue="ingress-dial")
    try:
        started = await ok(await client.post(
            "/v1/calls", json={"agent_id": agent["id"], "to": "+1 415 555 0100"}, headers=admin), 202)
        req = asked[0]
        assert req.call_id == started["call_id"] and started["status"] == "dialing"
        assert (req.tenant_id, req.agent_id, req.to_number, req.from_number, req.channel) == (
            a.id, agent["id"], "+14155550100", number["number"], "twilio")
        assert req.agent_speaks_first is False and req.machine_detection == "message"
        # ingress refusing: 503 with its reason
        r = await client.post("/v1/calls", json={"agent_id": agent["id"], "to": "+14155550100"}, headers=admin)
        assert "no Twilio account" in problem(r, 503)["detail"]
    finally:
        await sub.unsubscribe()
    await asyncio.sleep(0)
    audit = await ok(await client.get("/v1/audit-log", params={"resource_id": started["call_id"]}, headers=admin))
    assert [e["action"] for e in audit["items"]] == ["call.dial"]
    assert "+1415" not in json.dumps(audit)


def test_openapi_shows_trunk_and_call_examples(service: ControlApiService) -> None:
    doc = service.test_app.openapi()  # type: ignore[attr-defined]
    schemas = doc["components"]["schemas"]
    for name in ("SipTrunkFields", "SipTrunkOut", "SipTrunkUpdate", "OutboundCallCreate", "OutboundAllowList"):
        assert schemas[name]["examples"], name
    assert set(doc["paths"]["/v1/calls"]) == {"get", "post"}
    assert "403" in doc["paths"]["/v1/calls"]["post"]["responses"]
