"""Which endpoint a turn's completion goes to, with which key, through which guard: the platform's key only to the
platform's endpoint; an agent's own endpoint with its tenant's secret, reached only through the egress guard.

brain on the in-memory bus with the production ``openai`` adapter against the OpenAI-protocol double over real
HTTP on 127.0.0.1 (an internal address, so the guard refuses it unless ``EGRESS_ALLOW`` names it)."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from structlog.testing import capture_logs
from voice_runtime.memory import InMemoryBus
from voice_runtime.secretbox import SecretBox
from voice_schemas import events, subjects
from voice_schemas.agent import LlmSettings
from voice_schemas.streams import KV_SECRETS

from .calls import Call, brains, make_agent
from .fake_openai import FakeOpenAI, Script

pytestmark = pytest.mark.integration

PLATFORM_KEY = "sk-platform-do-not-leak"
TENANT_KEY = "sk-tenant-own-key"
SECRETS_KEY = base64.b64encode(os.urandom(32)).decode()
BOX = SecretBox(base64.b64decode(SECRETS_KEY))
UNREACHABLE = "http://platform-llm.invalid/v1"  # the platform endpoint when a test must not use it

Brain = Callable[..., Any]


@pytest.fixture
async def bus() -> InMemoryBus:
    return InMemoryBus("test")


@pytest.fixture
async def brain(bus: InMemoryBus, openai_double: FakeOpenAI) -> AsyncIterator[Brain]:
    """Starts brain with the production ``openai`` provider and the given settings."""
    openai_double.reset()
    async with brains(bus, UNREACHABLE, llm_api_key=PLATFORM_KEY, llm_first_token_timeout_s=2.0,
                      llm_total_timeout_s=4.0, secrets_key=SECRETS_KEY) as start:
        yield start


async def put_secret(bus: InMemoryBus, tenant_id: str, name: str, sealed: bytes) -> None:
    kv = (await bus.provision())[KV_SECRETS.bucket]
    await kv.put(subjects.secret_key(tenant_id, name), sealed)


async def one_turn(bus: InMemoryBus, llm: LlmSettings) -> tuple[list[events.ReplyChunk], list[Any]]:
    """A call of an agent with ``llm``: its reply to one caller turn, and what brain logged meanwhile."""
    agent = await make_agent(bus, llm=llm)
    with capture_logs() as logs:
        async with Call(bus, agent) as call:
            await call.wait(events.ReplyChunk, "greeting")
            await call.pub(events.TranscriptFinalized(utterance_id="u1", text="When do you open?"), turn_id="t1")
            chunks = [e.data for e in await call.wait(events.ReplyChunk, "t1", final=True)]
    assert not bus.dead_letters
    return chunks, logs


def no_secret_in(logs: list[Any]) -> None:
    text = repr(logs)
    assert PLATFORM_KEY not in text and TENANT_KEY not in text


async def test_an_agent_endpoint_on_an_internal_address_is_refused_unless_allow_listed(
        bus: InMemoryBus, brain: Brain, openai_double: FakeOpenAI) -> None:
    svc = await brain()  # no EGRESS_ALLOW
    await put_secret(bus, "t-brain", "llm-key", BOX.seal("t-brain", "llm-key", TENANT_KEY))
    chunks, logs = await one_turn(bus, LlmSettings(base_url=openai_double.base_url, api_key_secret="llm-key"))
    assert [c.text for c in chunks] == [svc.settings.apology]
    assert openai_double.requests == []  # refused at connect time: the double saw nothing
    failed = [e for e in logs if e["event"] == "reply_failed"]
    assert failed and "internal address" in failed[0]["reason"] and "EGRESS_ALLOW" in failed[0]["reason"]
    no_secret_in(logs)


async def test_an_allow_listed_agent_endpoint_gets_the_tenant_secret_never_the_platform_key(
        bus: InMemoryBus, brain: Brain, openai_double: FakeOpenAI) -> None:
    await brain(egress_allow=f"127.0.0.1:{openai_double.port}")
    await put_secret(bus, "t-brain", "llm-key", BOX.seal("t-brain", "llm-key", TENANT_KEY))
    chunks, logs = await one_turn(bus, LlmSettings(base_url=openai_double.base_url, api_key_secret="llm-key"))
    assert [c.text for c in chunks] == ["Sure. We open at eight in the morning.", "See you then!", ""]
    assert openai_double.authorizations == [f"Bearer {TENANT_KEY}"]
    no_secret_in(logs)


async def test_an_agent_endpoint_without_a_named_secret_gets_no_key(bus: InMemoryBus, brain: Brain,
                                                                    openai_double: FakeOpenAI) -> None:
    await brain(egress_allow=f"127.0.0.1:{openai_double.port}")
    chunks, _ = await one_turn(bus, LlmSettings(base_url=openai_double.base_url))
    assert chunks[0].text == "Sure. We open at eight in the morning."
    assert len(openai_double.authorizations) == 1 and PLATFORM_KEY not in str(openai_double.authorizations)


async def test_the_platform_endpoint_gets_the_platform_key(bus: InMemoryBus, brain: Brain,
                                                           openai_double: FakeOpenAI) -> None:
    await brain(llm_base_url=openai_double.base_url)  # operator-configured: not guarded, no allow-list needed
    chunks, _ = await one_turn(bus, LlmSettings())
    assert chunks[0].text == "Sure. We open at eight in the morning."
    assert openai_double.authorizations == [f"Bearer {PLATFORM_KEY}"]


async def test_a_redirect_to_an_internal_address_is_refused(bus: InMemoryBus, brain: Brain,
                                                            openai_double: FakeOpenAI) -> None:
    svc = await brain(egress_allow=f"127.0.0.1:{openai_double.port}")
    openai_double.reset(Script(redirect_to="http://127.0.0.1:9/v1/chat/completions"))
    chunks, logs = await one_turn(bus, LlmSettings(base_url=openai_double.base_url))
    assert [c.text for c in chunks] == [svc.settings.apology]
    failed = [e for e in logs if e["event"] == "reply_failed"]
    assert failed and "127.0.0.1:9" in failed[0]["reason"] and "internal address" in failed[0]["reason"]


@pytest.mark.parametrize("case", ["other-tenant", "missing", "no-secrets-key"])
async def test_a_tenant_key_that_cannot_be_had_is_an_apology_and_no_request(
        bus: InMemoryBus, brain: Brain, openai_double: FakeOpenAI, case: str) -> None:
    svc = await brain(egress_allow=f"127.0.0.1:{openai_double.port}",
                      **({"secrets_key": None} if case == "no-secrets-key" else {}))
    if case == "other-tenant":  # sealed for another tenant, copied under this tenant's name: must not open
        await put_secret(bus, "t-brain", "llm-key", BOX.seal("t-other", "llm-key", TENANT_KEY))
    elif case == "no-secrets-key":
        await put_secret(bus, "t-brain", "llm-key", BOX.seal("t-brain", "llm-key", TENANT_KEY))
    chunks, logs = await one_turn(bus, LlmSettings(base_url=openai_double.base_url, api_key_secret="llm-key"))
    assert [c.text for c in chunks] == [svc.settings.apology]
    assert openai_double.requests == []
    failed = [e for e in logs if e["event"] == "reply_failed"]
    assert failed and "llm-key" in failed[0]["reason"]
    no_secret_in(logs)


async def test_calls_are_spread_over_the_platform_servers_and_each_stays_on_its_own(
        bus: InMemoryBus, brain: Brain, openai_double: FakeOpenAI) -> None:
    # a second server of the platform's model (LLM_BASE_URL_REPLICAS): `make run` starts two, because one
    # llama.cpp server answers one request at a time and a second call's turn waited for the first's whole reply
    other = FakeOpenAI()
    other.start()
    try:
        await brain(llm_base_url=openai_double.base_url, llm_base_url_replicas=f" {other.base_url}, ,")
        agent = await make_agent(bus, llm=LlmSettings())
        async with Call(bus, agent) as a, Call(bus, agent) as b:
            await a.wait(events.ReplyChunk, "greeting")
            await b.wait(events.ReplyChunk, "greeting")
            for n, (call, text) in enumerate([(a, "When do you open?"), (b, "Do you deliver?"),
                                              (a, "And on Sunday?"), (b, "To the harbour?")]):
                await call.pub(events.TranscriptFinalized(utterance_id=f"u{n}", text=text), turn_id=f"t{n}")
                await call.wait(events.ReplyChunk, f"t{n}", final=True)

        def said(requests: list[dict[str, Any]]) -> list[str]:
            return [r["messages"][-1]["content"] for r in requests]

        first, second = said(openai_double.requests), said(other.requests)
        assert {tuple(first), tuple(second)} == {("When do you open?", "And on Sunday?"),
                                                 ("Do you deliver?", "To the harbour?")}
        assert other.authorizations == [f"Bearer {PLATFORM_KEY}"] * 2  # the platform's key: the same model
    finally:
        other.stop()
    assert not bus.dead_letters


def test_a_new_call_goes_to_the_least_busy_server_and_the_map_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from voice_brain import endpoints
    from voice_brain.chat import Endpoint
    from voice_runtime.egress import EgressPolicy

    e = endpoints.AgentEndpoints(platform=Endpoint("http://a/v1", "k"), egress=EgressPolicy(), box=None,
                                 secrets=None, replicas=("http://b/v1", "http://a/v1"))

    def url(call_id: str | None, at: float = 0.0) -> str:
        return e.platform_for(call_id, now=at).base_url

    assert [url("c1"), url("c2"), url("c3"), url("c1"), url("c2")] == \
        ["http://a/v1", "http://b/v1", "http://a/v1", "http://a/v1", "http://b/v1"]
    assert url(None) == "http://a/v1"  # no call (e.g. an admin preview): the first server
    # calls quiet for longer than ACTIVE_S no longer count: c4 joins the server of the one call still talking
    assert url("c2", endpoints.ACTIVE_S + 10) == "http://b/v1"
    assert url("c4", endpoints.ACTIVE_S + 11) == "http://a/v1"
    monkeypatch.setattr(endpoints, "MAX_CALLS", 3)
    for n in range(10):
        url(f"x{n}", 500.0)
    assert len(e._placed) == 3
    single = endpoints.AgentEndpoints(platform=Endpoint("http://a/v1", "k"), egress=EgressPolicy(), box=None,
                                      secrets=None)
    assert single.platform_for("c1").base_url == "http://a/v1" and not single._placed
