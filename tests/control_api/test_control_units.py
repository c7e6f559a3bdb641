"""Pure logic of control-api: credentials, rate limit, validation, patch models, preconditions, KV key parsing,
OpenAPI."""

from __future__ import annotations

import time

import httpx
import pytest
from pydantic import ValidationError
from voice_control_api import kvsync, security
from voice_control_api.fields import normalize_e164
from voice_control_api.models import (
    AgentCreate,
    AgentFields,
    AgentPatch,
    LlmPatch,
    PhoneNumberCreate,
    SttPatch,
    TurnPatch,
    WebhookCreate,
)
from voice_control_api.problems import refusal
from voice_control_api.ratelimit import RateLimiter
from voice_control_api.rest import expected_version
from voice_control_api.service import ControlApiService
from voice_control_api.settings import ControlApiSettings
from voice_control_api.store.calls import _latency
from voice_control_api.usecases.common import ExpectedVersion
from voice_control_api.usecases.errors import PreconditionFailed, StaleVersion
from voice_schemas import subjects
from voice_schemas.agent import AgentConfig, LlmSettings, SttSettings, TurnSettings

pytestmark = pytest.mark.unit


def test_api_keys_are_random_prefixed_and_checked_by_hash() -> None:
    a, b = security.generate_api_key(), security.generate_api_key()
    assert a.key != b.key and a.prefix != b.prefix
    assert a.key.startswith(a.prefix + "_") and len(a.prefix) == len("vk_") + 8
    assert security.key_prefix(a.key) == a.prefix
    assert security.key_matches(a.key, a.key_hash) and not security.key_matches(b.key, a.key_hash)
    assert a.key not in a.key_hash


def test_foreign_keys_get_a_hash_prefix_that_cannot_collide_with_issued_ones() -> None:
    p = security.key_prefix("operator-chosen-bootstrap-key")
    assert p.startswith("ext_") and p == security.key_prefix("operator-chosen-bootstrap-key")
    assert security.key_prefix("vk_short").startswith("ext_")


def test_access_tokens_roundtrip_expire_and_reject_tampering() -> None:
    tokens = security.AccessTokens("s" * 40, ttl_s=60)
    t = tokens.issue("u1", "t1", "admin")
    assert security.looks_like_jwt(t)
    claims = tokens.verify(t)
    assert (claims.user_id, claims.tenant_id, claims.role) == ("u1", "t1", "admin")
    with pytest.raises(security.InvalidToken):
        security.AccessTokens("x" * 40, ttl_s=60).verify(t)
    with pytest.raises(security.InvalidToken):
        tokens.verify(tokens.issue("u1", "t1", "admin", now=time.time() - 3600))
    with pytest.raises(ValueError):
        security.AccessTokens("short", ttl_s=60)


def test_passwords_hash_and_verify() -> None:
    from argon2 import PasswordHasher

    pw = security.Passwords(PasswordHasher(time_cost=1, memory_cost=8192))
    h = pw.hash("correct horse")
    assert pw.verify(h, "correct horse") and not pw.verify(h, "wrong")
    assert not pw.verify(None, "anything") and not pw.verify("not-a-hash", "x")


def test_token_bucket_limits_bursts_and_refills() -> None:
    now = [0.0]
    rl = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [rl.acquire("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = rl.acquire("k")
    assert wait == pytest.approx(0.5)
    assert RateLimiter.retry_after_header(wait) == "1"
    assert rl.acquire("other") == 0.0  # per credential
    now[0] += 0.5
    assert rl.acquire("k") == 0.0
    assert RateLimiter(rate=0, burst=1).acquire("k") == 0.0  # disabled


def test_token_bucket_forgets_the_least_recent_keys() -> None:
    rl = RateLimiter(rate=1.0, burst=1, max_keys=2, clock=lambda: 0.0)
    rl.acquire("a")
    rl.acquire("b")
    rl.acquire("c")
    assert rl.acquire("a") == 0.0  # "a" was evicted, so it starts with a full bucket


def test_client_address_is_taken_from_forwarded_headers_of_trusted_proxies_only() -> None:
    from voice_control_api.proxies import TrustedProxies

    p = TrustedProxies.parse("10.0.0.1, 10.9.0.0/16, 2001:db8::/32")
    assert p.client_address("203.0.113.5", ["198.51.100.1"]) == "203.0.113.5"  # not a proxy: header ignored
    assert p.client_address("10.0.0.1", ["198.51.100.1"]) == "198.51.100.1"
    assert p.client_address("10.0.0.1", []) == "10.0.0.1"  # the proxy's own request
    # rightmost address no trusted proxy added: what the client wrote on the left is not believed
    assert p.client_address("10.0.0.1", ["1.1.1.1, 198.51.100.1, 10.9.3.4"]) == "198.51.100.1"
    assert p.client_address("10.0.0.1", ["1.1.1.1", "198.51.100.1"]) == "198.51.100.1"  # two header lines
    assert p.client_address("10.0.0.1", ["10.9.0.8, 10.9.0.7"]) == "10.9.0.8"  # all trusted: the leftmost
    assert p.client_address("10.0.0.1", ["garbage, 10.9.0.7"]) == "10.9.0.7"  # stops at what it cannot read
    assert p.client_address("10.0.0.1", ["198.51.100.1:4711"]) == "198.51.100.1"
    assert p.client_address("10.0.0.1", ["[2001:db9::1]:443"]) == "2001:db9::1"
    assert p.client_address("::ffff:10.0.0.1", ["198.51.100.1"]) == "198.51.100.1"  # IPv4-mapped peer
    assert p.client_address("2001:db8::5", ["198.51.100.1"]) == "198.51.100.1"
    assert p.client_address(None, ["198.51.100.1"]) == "unknown"

    f = TrustedProxies.parse("10.0.0.1", header="forwarded")
    value = 'for=192.0.2.60;proto=http;by=203.0.113.43, For="[2001:db8:cafe::17]:4711"'
    assert f.client_address("10.0.0.1", [value]) == "2001:db8:cafe::17"
    assert f.client_address("10.0.0.1", ["for=192.0.2.60, for=unknown"]) == "10.0.0.1"
    assert f.client_address("10.0.0.1", ["for=192.0.2.60"]) == "192.0.2.60"

    nobody = TrustedProxies.parse("")
    assert nobody.client_address("10.0.0.1", ["198.51.100.1"]) == "10.0.0.1"
    for bad in ("10.0.0.300", "example.com", "10.0.0.0/33"):
        with pytest.raises(ValueError):
            TrustedProxies.parse(bad)
    with pytest.raises(ValidationError):
        ControlApiSettings(trusted_proxies="not-an-address")


@pytest.mark.parametrize(
    "raw,e164",
    [
        ("+14155550100", "+14155550100"),
        ("+1 (415) 555-0100", "+14155550100"),
        (" +44 20 7946 0958", "+442079460958"),
        ("+15551234567", "+15551234567"),
    ],
)
def test_numbers_are_normalised_to_e164(raw: str, e164: str) -> None:
    assert normalize_e164(raw) == e164


@pytest.mark.parametrize(
    "raw", ["4155550100", "+1", "+1415555010000000", "+abc", "", "+999 1234567", "+1\x004155550100"]
)
def test_invalid_numbers_are_refused(raw: str) -> None:
    with pytest.raises(ValueError):
        normalize_e164(raw)


def test_request_models_refuse_ids_tenants_and_versions() -> None:
    for field in ("id", "tenant_id", "version", "created_at"):
        with pytest.raises(ValidationError) as e:
            AgentCreate.model_validate({"name": "x", field: "1"})
        assert e.value.errors()[0]["loc"] == (field,)
    with pytest.raises(ValidationError):
        PhoneNumberCreate.model_validate({"number": "+14155550100", "agent_id": "a", "tenant_id": "t"})
    # in a PATCH, `version` is the precondition, not a value to set
    assert AgentPatch.model_validate({"version": 3}).version == 3


def test_text_fields_refuse_nul_and_bad_nested_values() -> None:
    with pytest.raises(ValidationError):
        AgentCreate.model_validate({"system_prompt": "a\x00b"})
    with pytest.raises(ValidationError):
        AgentCreate.model_validate({"llm": {"temperature": 3}})
    with pytest.raises(ValidationError):
        AgentCreate.model_validate({"llm": {"base_url": "ftp://x"}})
    with pytest.raises(ValidationError):
        WebhookCreate.model_validate({"url": "https://x.example", "events": ["no.such"]})
    assert WebhookCreate.model_validate({"url": "https://x.example/h", "events": ["*", "call.ended"]}).events


def test_preconditions() -> None:
    assert expected_version('"3"') == ExpectedVersion(3, None)
    assert expected_version('W/"3"', 2) == ExpectedVersion(3, 2)
    assert expected_version("*") == ExpectedVersion(None, None)
    assert expected_version("garbage") == ExpectedVersion(-1, None)
    expected_version('"3"', 3).check(3)
    expected_version(None).check(3)
    with pytest.raises(PreconditionFailed) as stale_etag:
        expected_version('"2"').check(3)
    problem = refusal(stale_etag.value)
    assert (problem.status, problem.kind, problem.headers) == (412, "precondition-failed", {"ETag": '"3"'})
    with pytest.raises(StaleVersion) as stale_body:
        expected_version(None, 2).check(3)
    problem = refusal(stale_body.value)
    assert (problem.status, problem.kind, problem.headers) == (409, "version-conflict", {"ETag": '"3"'})
    assert problem.detail == "version 2 is stale; the current version is 3"


def test_patch_models_take_their_fields_and_bounds_from_the_schema() -> None:
    for patch, schema in ((LlmPatch, LlmSettings), (SttPatch, SttSettings), (TurnPatch, TurnSettings)):
        assert set(patch.model_fields) == set(schema.model_fields), patch.__name__
        assert patch.model_validate({}).model_dump(exclude_unset=True) == {}
        patched = patch.model_json_schema()["properties"]
        for name, declared in schema.model_json_schema()["properties"].items():
            allowed = patched[name]["anyOf"][0]  # the other branch is null: unchanged
            for bound in ("minimum", "maximum"):
                assert allowed.get(bound) == declared.get(bound), (patch.__name__, name, bound)
    assert set(AgentPatch.model_fields) == {*AgentCreate.model_fields, "version"}
    # a version is stored as the data plane's AgentConfig: every field an agent is made of must be one of its own
    assert set(AgentFields.model_fields) == set(AgentConfig.model_fields) - {"id", "tenant_id", "version"}
    for body in ({"turn": {"end_of_turn_ms": 50}}, {"llm": {"max_tokens": 4097}}, {"turn": {"unknown": 1}}):
        with pytest.raises(ValidationError):
            AgentPatch.model_validate(body)
    patch = AgentPatch.model_validate({"llm": {"temperature": 0.3}, "version": 2})
    assert patch.model_dump(exclude_unset=True) == {"llm": {"temperature": 0.3}, "version": 2}


def test_kv_keys_parse_back_to_what_built_them() -> None:
    assert subjects.parse_agent_key(subjects.agent_key("abc")) == ("abc", None)
    assert subjects.parse_agent_key(subjects.agent_version_key("abc", 12)) == ("abc", 12)
    assert subjects.parse_agent_key("a.abc.vx") is None
    assert subjects.parse_agent_key("a.abc.v1.x") is None
    assert subjects.parse_agent_key("other") is None
    assert subjects.parse_number_key(subjects.number_key("+14155550100")) == "+14155550100"
    assert subjects.parse_number_key("n12x") is None
    assert subjects.parse_number_key(subjects.agent_key("abc")) is None
    assert kvsync._version_of(b'{"version": 4}') == 4
    assert kvsync._version_of(b"nope") is None


def test_turn_latency_headline_and_breakdown() -> None:
    assert _latency(None) == (None, None)
    assert _latency('{"stt_ms": 120, "voice_to_voice_ms": 800.5}') == (
        800.5,
        {"stt_ms": 120.0, "voice_to_voice_ms": 800.5},
    )
    assert _latency('{"stt_ms": 120}') == (None, {"stt_ms": 120.0})
    assert _latency("650") == (650.0, None)


def test_openapi_declares_auth_problems_and_examples_for_every_operation() -> None:
    app = ControlApiService(ControlApiSettings()).app()
    doc = app.openapi()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    public = {("post", "/v1/auth/login"), ("post", "/v1/auth/refresh"), ("post", "/v1/auth/logout")}
    for path, item in doc["paths"].items():
        assert path.startswith("/v1/")
        for method, op in item.items():
            errors = {c: r for c, r in op["responses"].items() if int(c) >= 400}
            assert "422" in errors or method == "get", (method, path)
            for code, response in errors.items():
                assert list(response["content"]) == ["application/problem+json"], (method, path, code)
            if (method, path) not in public:
                assert op.get("security") == [{"bearer": []}], (method, path)
                assert {"401", "429"} <= errors.keys(), (method, path)
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "Problem" in schemas
    for name in ("Agent", "AgentCreate", "AgentPatch", "CallDetail", "TenantCreated", "PhoneNumber", "Problem"):
        assert schemas[name]["examples"], name


async def test_cors_is_configurable() -> None:
    svc = ControlApiService(ControlApiSettings(cors_origins="https://console.example.com"))
    transport = httpx.ASGITransport(app=svc.app())
    async with httpx.AsyncClient(transport=transport, base_url="http://cors") as c:
        r = await c.options(
            "/v1/agents",
            headers={
                "Origin": "https://console.example.com",
                "Access-Control-Request-Method": "PATCH",
                "Access-Control-Request-Headers": "authorization,if-match",
            },
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://console.example.com"
        r = await c.options(
            "/v1/agents", headers={"Origin": "https://evil.example.com", "Access-Control-Request-Method": "GET"}
        )
        assert "access-control-allow-origin" not in r.headers
    svc = ControlApiService(ControlApiSettings())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=svc.app()), base_url="http://cors") as c:
        r = await c.options(
            "/v1/agents", headers={"Origin": "https://console.example.com", "Access-Control-Request-Method": "GET"}
        )
        assert "access-control-allow-origin" not in r.headers
