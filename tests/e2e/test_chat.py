"""Text chat end to end: control-api's REST API → ingress → brain → analytics → the calls API.

Its own NATS server and database; ingress, media, brain, tts and analytics run as processes, control-api in this
process; brain's model is an OpenAI-protocol server scripted by the test (``tests/brain/fake_openai.py``), so the
replies are known. tts and media run too: a chat must cost them nothing (their metrics, and no audio on the bus).
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from nats.js.errors import NotFoundError
from pydantic import SecretStr
from voice_control_api.service import ControlApiService
from voice_control_api.settings import ControlApiSettings
from voice_devstack.stack import SERVICES, free_ports, nats_command, wait_port
from voice_runtime.bus import Bus
from voice_schemas import events, subjects

from ..brain.fake_openai import FakeOpenAI, Script
from ..control_api.helpers import BOOTSTRAP_KEY, TenantCreds, bearer, ok, populate, problem

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CALL_TOKEN_KEY = base64.b64encode(os.urandom(32)).decode()
STACK = ("ingress", "media", "brain", "tts", "analytics")
REPLY_TIMEOUT_S = 10.0
GREETING = "Hello, this is the bakery. What can I do for you?"
ANSWER = "We open at eight in the morning. See you then!"


@dataclass
class Stack:
    nats_url: str
    database_url: str
    llm: FakeOpenAI
    ports: dict[str, int]
    logs: dict[str, Path] = field(default_factory=dict)

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")

    def metric(self, name: str, series: str) -> float:
        """The sum of ``series`` (a metric name with its labels, as exposed) on ``name``'s /metrics."""
        text = httpx.get(f"http://127.0.0.1:{self.ports[name]}/metrics", timeout=5).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series))


@dataclass
class World:
    api: httpx.AsyncClient
    stack: Stack
    bus: Bus
    a: TenantCreds
    b: TenantCreds
    agent: str  # tenant A's agent (admin-owned)


def _ready(url: str, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def chat_database(postgres_server: str) -> Iterator[str]:
    """A database of this module's own: control-api pushes what is in it to this module's KV."""
    name = f"voice_test_chat_{os.getpid()}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(f"{postgres_server}/postgres")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    yield f"{postgres_server}/{name}"
    asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def stack(chat_database: str) -> Iterator[Stack]:
    tmp = Path(tempfile.mkdtemp(prefix="voice-chat-e2e-"))
    procs: list[subprocess.Popen[bytes]] = []
    nats_port, *stack_ports = free_ports(1 + len(STACK))
    procs.append(subprocess.Popen(nats_command(nats_port, tmp / "nats"), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL))
    assert wait_port("127.0.0.1", nats_port, 10)
    llm = FakeOpenAI(script=Script(text=ANSWER, token_delay_s=0.0))
    llm.start()
    s = Stack(f"nats://127.0.0.1:{nats_port}", chat_database, llm, dict(zip(STACK, stack_ports, strict=True)))
    module = {n: m for n, m, _ in SERVICES}
    env = dict(os.environ, NATS_URL=s.nats_url, DATABASE_URL=chat_database, LLM_BASE_URL=llm.base_url,
               LLM_MODEL="fake", LOG_FORMAT="json", SHUTDOWN_GRACE_S="3", STATE_DIR=str(tmp))
    try:
        for name in STACK:
            extra = {"CALL_TOKEN_KEY": CALL_TOKEN_KEY} if name == "ingress" else {}
            s.logs[name] = tmp / f"{name}.log"
            procs.append(subprocess.Popen([sys.executable, "-m", module[name]],
                                          env=dict(env, HTTP_PORT=str(s.ports[name]), **extra),
                                          stdout=open(s.logs[name], "wb"), stderr=subprocess.STDOUT))
        for name, proc in zip(STACK, procs[1:], strict=True):
            assert _ready(f"http://127.0.0.1:{s.ports[name]}/readyz", proc, 120), f"{name}:\n{s.log(name)[-3000:]}"
        yield s
    finally:
        for proc in reversed(procs):  # services first, NATS last
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        llm.stop()


@pytest.fixture(scope="module")
async def world(stack: Stack) -> AsyncIterator[World]:
    settings = ControlApiSettings(
        database_url=stack.database_url, nats_url=stack.nats_url, bootstrap_admin_key=SecretStr(BOOTSTRAP_KEY),
        call_token_key=SecretStr(CALL_TOKEN_KEY), chat_reply_timeout_s=REPLY_TIMEOUT_S,
        rate_limit_per_s=10_000.0, rate_limit_burst=1_000_000, kv_reconcile_interval_s=0.0, log_level="WARNING",
        password_hash_time_cost=1, password_hash_memory_kib=8192,
    )
    service = ControlApiService(settings)
    app = service.app()
    bus = await Bus.connect(stack.nats_url, "chat-e2e")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://control-api.test", timeout=60) as api:
            a, b = await populate(api, "chat tenant A"), await populate(api, "chat tenant B")
            agent = await ok(await api.post("/v1/agents", headers=bearer(a.admin_key), json={
                "name": "bakery", "system_prompt": "You are the bakery's assistant.", "first_message": GREETING}), 201)
            yield World(api, stack, bus, a, b, agent["id"])
    await bus.close()


async def start_chat(w: World, token: str, agent_id: str | None = None) -> dict[str, Any]:
    r = await w.api.post(f"/v1/agents/{agent_id or w.agent}/chats", headers=bearer(token))
    return await ok(r, 201)


async def call_detail(w: World, call_id: str, token: str, turns: int) -> dict[str, Any]:
    """The call once analytics has recorded it as ended with ``turns`` turns."""
    deadline = time.monotonic() + 30
    while True:
        r = await w.api.get(f"/v1/calls/{call_id}", headers=bearer(token))
        if r.status_code == 200 and r.json()["status"] == "ended" and len(r.json()["turns"]) >= turns:
            return r.json()
        assert time.monotonic() < deadline, f"call not recorded: {r.status_code} {r.text}"
        await asyncio.sleep(0.2)


async def no_message(w: World, stream: str, subject: str) -> bool:
    try:
        await w.bus.js.get_last_msg(stream, subject)
    except NotFoundError:
        return True
    return False


# ---------------------------------------------------------------- a chat, stored
async def test_a_chat_through_the_api_is_stored_as_a_call(world: World) -> None:
    w, admin = world, bearer(world.a.admin_key)
    w.stack.llm.reset(Script(text=ANSWER, token_delay_s=0.0))
    tts_skipped = w.stack.metric("tts", 'voice_tts_chunks_skipped_total{reason="text_only"}')
    media_skipped = w.stack.metric("media", 'voice_media_calls_not_claimed_total{reason="text_only"}')

    r = await w.api.post(f"/v1/agents/{w.agent}/chats", headers=admin)
    chat = await ok(r, 201)
    call_id = chat["call_id"]
    assert chat["greeting"] == GREETING and r.headers["Location"] == f"/v1/calls/{call_id}"
    reply = await ok(await w.api.post(f"/v1/chats/{call_id}/messages", headers=admin,
                                      json={"text": "When do you open?"}), 200)
    assert reply == {"reply": ANSWER, "turn": 1, "ended": False}
    prompt = w.stack.llm.requests[-1]["messages"]  # the same brain: the agent's prompt, greeting, the question
    assert prompt[0] == {"role": "system", "content": "You are the bakery's assistant."}
    assert {"role": "assistant", "content": GREETING} in prompt and prompt[-1]["content"] == "When do you open?"
    assert (await w.api.delete(f"/v1/chats/{call_id}", headers=admin)).status_code == 204

    call = await call_detail(w, call_id, w.a.admin_key, turns=3)
    assert (call["channel"], call["end_reason"], call["agent_id"]) == ("chat", "caller_hangup", w.agent)
    assert call["to_number"] is None and call["from_number"] is None and call["answered_at"] is not None
    assert [(t["speaker"], t["text"]) for t in call["turns"]] == [
        ("agent", GREETING), ("caller", "When do you open?"), ("agent", ANSWER)]
    assert not any(t["interrupted"] for t in call["turns"])
    listed = await ok(await w.api.get("/v1/calls", params={"channel": "chat"}, headers=admin), 200)
    assert call_id in [c["id"] for c in listed["items"]]

    # tts saw both replies (the greeting and the answer) and synthesised neither; media never claimed the call
    assert w.stack.metric("tts", 'voice_tts_chunks_skipped_total{reason="text_only"}') >= tts_skipped + 2
    assert w.stack.metric("media", 'voice_media_calls_not_claimed_total{reason="text_only"}') == media_skipped + 1
    assert w.stack.metric("tts", 'voice_audio_frames_total{service="tts"') == 0
    assert call_id not in w.stack.log("media") and call_id not in w.stack.log("tts")
    assert await no_message(w, "AUDIO", subjects.audio_out(call_id))
    assert await no_message(w, "AUDIO", subjects.audio_in(call_id))
    for kind in (events.UtteranceCaptured, events.SpeechStarted, events.PlayoutStarted):
        assert await no_message(w, "CALLS", kind.subject_for(call_id))
    # and what was said stays out of the logs
    for name in STACK:
        assert "When do you open?" not in w.stack.log(name)


# ---------------------------------------------------------------- who may chat, and bad input
async def test_chats_are_scoped_like_the_agent(world: World) -> None:
    w = world
    w.stack.llm.reset(Script(text=ANSWER, token_delay_s=0.0))
    chat = await start_chat(w, w.a.admin_key)
    call_id = chat["call_id"]
    message = {"text": "Hello?"}
    # another tenant: neither its agent nor its chat exists for them
    problem(await w.api.post(f"/v1/agents/{w.agent}/chats", headers=bearer(w.b.admin_key)), 404)
    problem(await w.api.post(f"/v1/chats/{call_id}/messages", headers=bearer(w.b.admin_key), json=message), 404)
    problem(await w.api.delete(f"/v1/chats/{call_id}", headers=bearer(w.b.admin_key)), 404)
    # a supervisor of the same tenant who does not own the agent: the same
    problem(await w.api.post(f"/v1/agents/{w.agent}/chats", headers=bearer(w.a.sup_key)), 404)
    problem(await w.api.post(f"/v1/chats/{call_id}/messages", headers=bearer(w.a.sup_jwt), json=message), 404)
    # the chat is untouched by all of that
    assert (await ok(await w.api.post(f"/v1/chats/{call_id}/messages", headers=bearer(w.a.admin_key),
                                      json=message), 200))["turn"] == 1
    # a supervisor chats with their own agent; their tenant's admin may use that chat too
    own = await ok(await w.api.post("/v1/agents", headers=bearer(w.a.sup_key), json={"name": "sup agent"}), 201)
    sup_chat = await start_chat(w, w.a.sup_key, own["id"])
    assert sup_chat["greeting"] == "Hello! How can I help you today?"
    reply = await ok(await w.api.post(f"/v1/chats/{sup_chat['call_id']}/messages", headers=bearer(w.a.sup_jwt),
                                      json=message), 200)
    assert reply["reply"] == ANSWER
    assert (await w.api.delete(f"/v1/chats/{sup_chat['call_id']}", headers=bearer(w.a.admin_key))).status_code == 204
    assert (await w.api.delete(f"/v1/chats/{call_id}", headers=bearer(w.a.admin_key))).status_code == 204


async def test_bad_chat_requests_are_refused_clearly(world: World) -> None:
    w, admin = world, bearer(world.a.admin_key)
    w.stack.llm.reset(Script(text=ANSWER, token_delay_s=0.0))
    unknown = subjects.new_call_id()
    assert problem(await w.api.post(f"/v1/chats/{unknown}/messages", headers=admin, json={"text": "hi"}),
                   404)["detail"] == "chat not found"
    problem(await w.api.delete(f"/v1/chats/{unknown}", headers=admin), 404)
    problem(await w.api.post("/v1/agents/no-such-agent/chats", headers=admin), 404)
    problem(await w.api.post("/v1/chats/not..an.id/messages", headers=admin, json={"text": "hi"}), 422)

    call_id = (await start_chat(w, w.a.admin_key))["call_id"]
    url = f"/v1/chats/{call_id}/messages"
    for body, where in (({"text": "x" * 2001}, "body.text"), ({"text": "   "}, "body.text"), ({}, "body.text"),
                        ({"text": "hi", "turn": 3}, "body.turn"), ({"text": 42}, "body.text")):
        refused = problem(await w.api.post(url, headers=admin, json=body), 422)
        assert where in [e["field"] for e in refused["errors"]], refused
    assert (await ok(await w.api.post(url, headers=admin, json={"text": "x" * 2000}), 200))["turn"] == 1

    # an inactive agent takes no chat
    inactive = await ok(await w.api.post("/v1/agents", headers=admin, json={"name": "off", "is_active": False}), 201)
    problem(await w.api.post(f"/v1/agents/{inactive['id']}/chats", headers=admin), 409)

    # an ended chat takes no message; ending it again is not an error. Once ended, the chat is known from the calls
    # table, which analytics writes from the call's events: until its row is there (a busy CI machine once got
    # there first), the chat is not found, as any id the tenant has no record of
    assert (await w.api.delete(f"/v1/chats/{call_id}", headers=admin)).status_code == 204
    await call_detail(w, call_id, w.a.admin_key, 1)
    assert "ended" in problem(await w.api.post(url, headers=admin, json={"text": "hi"}), 409)["detail"]
    assert (await w.api.delete(f"/v1/chats/{call_id}", headers=admin)).status_code == 204
    problem(await w.api.post(url, headers=bearer(w.b.admin_key), json={"text": "hi"}), 404)  # still not theirs


async def test_a_late_reply_is_a_504_and_the_chat_goes_on(world: World) -> None:
    w, admin = world, bearer(world.a.admin_key)
    call_id = (await start_chat(w, w.a.admin_key))["call_id"]
    url = f"/v1/chats/{call_id}/messages"
    # the model sends one word, then holds the rest until released (longer than CHAT_REPLY_TIMEOUT_S)
    w.stack.llm.reset(Script(text="Let me check. We open at eight.", hold_after_words=1, hold_s=60, token_delay_s=0.0))
    waiting = asyncio.create_task(w.api.post(url, headers=admin, json={"text": "When do you open?"}))
    deadline = time.monotonic() + 20
    while not w.stack.llm.requests:
        assert time.monotonic() < deadline, "brain never asked the model"
        await asyncio.sleep(0.05)
    busy = problem(await w.api.post(url, headers=admin, json={"text": "Hello?"}), 409)
    assert "waiting for its reply" in busy["detail"]
    late = problem(await waiting, 504)
    assert late["type"].endswith("/timeout")
    w.stack.llm.release.set()
    w.stack.llm.reset(Script(text=ANSWER, token_delay_s=0.0))
    reply = await ok(await w.api.post(url, headers=admin, json={"text": "Are you there?"}), 200)
    assert reply["turn"] == 2 and reply["reply"] == ANSWER
    assert (await w.api.delete(f"/v1/chats/{call_id}", headers=admin)).status_code == 204
    call = await call_detail(w, call_id, w.a.admin_key, turns=4)
    spoken = [(t["speaker"], t["text"]) for t in call["turns"]]
    assert ("caller", "When do you open?") in spoken and ("caller", "Are you there?") in spoken
    assert ("agent", ANSWER) in spoken


async def test_the_openapi_document_lists_the_chat_endpoints(world: World) -> None:
    paths = (await ok(await world.api.get("/openapi.json"), 200))["paths"]
    assert {"/v1/agents/{agent_id}/chats", "/v1/chats/{call_id}/messages", "/v1/chats/{call_id}"} <= set(paths)
    responses = paths["/v1/chats/{call_id}/messages"]["post"]["responses"]
    assert {"200", "404", "409", "422", "503", "504"} <= set(responses)
    assert "application/problem+json" in responses["504"]["content"]
