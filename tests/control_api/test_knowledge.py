"""Knowledge bases end to end over real PostgreSQL: uploads through the API (a PDF made in the test), agents that
attach bases, brain retrieving into a turn's prompt (the production ``openai`` adapter against an OpenAI-protocol
server over real HTTP), the sources in ``turn.completed``, stored by analytics' recorder and shown in the call
detail; and two tenants that never see each other's chunks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from voice_analytics import recorder
from voice_brain.knowledge import Knowledge
from voice_brain.prompting import system_prompt
from voice_brain.settings import BrainSettings
from voice_control_api.service import ControlApiService
from voice_runtime.memory import InMemoryBus
from voice_schemas import AgentConfig, events, subjects

from ..brain.calls import Call, brains
from ..brain.fake_openai import EMBEDDING_DIMENSIONS, FakeOpenAI, Script
from ..knowledge.pdfs import make_pdf
from .conftest import make_settings
from .helpers import TenantCreds, bearer, ok, problem

pytestmark = pytest.mark.integration

MENU_PDF = make_pdf([
    ["Chez Example - practical information.", "Parking is free in the courtyard behind the restaurant after six pm.",
     "The entrance to the courtyard is on Mill Lane."],
    ["Opening hours: we open at noon and close at eleven pm, Tuesday to Sunday.", "We are closed on Mondays."],
])
B_NOTES = b"Garage parking for Beta Corp visitors: level minus two, access code 4711."


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeOpenAI]:
    f = FakeOpenAI()
    f.start()
    yield f
    f.stop()


@pytest.fixture
async def bus() -> InMemoryBus:
    return InMemoryBus("test")


@pytest.fixture
async def brain(bus: InMemoryBus, llm: FakeOpenAI, database_url: str) -> AsyncIterator[Any]:
    llm.reset(Script(text="It is free behind the restaurant after six, according to our menu."))
    # a generous timeout: this asserts what is retrieved, never how fast (bench/knowledge.py measures that)
    async with brains(bus, llm.base_url, database_url=database_url, knowledge_timeout_s=5.0,
                      llm_first_token_timeout_s=5.0) as start:
        yield start


async def create_base(client: httpx.AsyncClient, t: TenantCreds, name: str) -> str:
    body = await ok(await client.post("/v1/knowledge-bases", json={"name": name}, headers=bearer(t.admin_key)), 201)
    return str(body["id"])


async def upload(client: httpx.AsyncClient, key: str, base_id: str, name: str, data: bytes,
                 content_type: str = "application/octet-stream") -> httpx.Response:
    return await client.post(f"/v1/knowledge-bases/{base_id}/documents", files={"file": (name, data, content_type)},
                             headers=bearer(key))


async def agent_config(client: httpx.AsyncClient, key: str, agent_id: str) -> AgentConfig:
    """The agent's version as control-api mirrors it to KV for the data plane."""
    deployment = await ok(await client.get(f"/v1/agents/{agent_id}/deployment", headers=bearer(key)))
    assert deployment["in_sync"]
    return AgentConfig.model_validate(deployment["config"])


async def put_agent(bus: InMemoryBus, agent: AgentConfig) -> None:
    kv = (await bus.provision())["agents"]
    await kv.put(subjects.agent_version_key(agent.id, agent.version), agent.model_dump_json().encode())


async def ask(bus: InMemoryBus, agent: AgentConfig, question: str) -> tuple[Call, events.TurnCompleted]:
    async with Call(bus, agent) as call:
        await call.wait(events.ReplyChunk, "greeting")
        await call.pub(events.TranscriptFinalized(utterance_id="u1", text=question), turn_id="t1")
        chunks = await call.wait(events.ReplyChunk, "t1", final=True)
        await call.pub(events.PlayoutFinished(heard_chunks=[c.data.index for c in chunks], cleared=False),
                       turn_id="t1")
        (done,) = await call.wait(events.TurnCompleted, "t1")
    return call, done.data


def knowledge_messages(request: dict[str, Any]) -> list[str]:
    return [m["content"] for m in request["messages"] if m["role"] == "system" and "Source:" in m["content"]]


async def record(database_url: str, call: Call) -> None:
    """What analytics' recorder writes for the call's events."""
    steps = {events.CallStarted: recorder.call_started, events.CallAnswered: recorder.call_answered,
             events.TurnCompleted: recorder.turn_completed}
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        r = recorder.CallRecorder(pool)
        for env in call.seen:
            step = steps.get(type(env.data))
            if step is not None:
                await r.apply(env, step)
    finally:
        await pool.close()


async def test_bases_and_documents_through_the_api(client: httpx.AsyncClient, service: ControlApiService,
                                                   world: dict[str, TenantCreds], database_url: str) -> None:
    a, b = world["A"], world["B"]
    admin = bearer(a.admin_key)
    base = await create_base(client, a, "Restaurant facts")
    problem(await client.post("/v1/knowledge-bases", json={"name": "Restaurant facts"}, headers=admin), 409)
    problem(await client.post("/v1/knowledge-bases", json={"name": "x"}, headers=bearer(a.sup_jwt)), 403)

    doc = await ok(await upload(client, a.admin_key, base, "menu.pdf", MENU_PDF), 201)
    assert (doc["name"], doc["content_type"], doc["pages"], doc["size_bytes"]) == (
        "menu.pdf", "application/pdf", 2, len(MENU_PDF))
    assert doc["chunks"] >= 1 and doc["embedding_model"] is None and doc["tenant_id"] == a.id
    # refusals: a format we do not take, a broken PDF, a scan without text, a supervisor, over the size cap
    p = problem(await upload(client, a.admin_key, base, "sheet.xlsx", b"PK\x03\x04"), 415)
    assert "unsupported document format" in p["detail"]
    p = problem(await upload(client, a.admin_key, base, "broken.pdf", b"%PDF-1.4 garbage"), 422)
    assert p["errors"][0]["field"] == "body.file" and "not a readable PDF" in p["detail"]
    problem(await upload(client, a.admin_key, base, "scan.pdf", make_pdf([[]])), 422)
    problem(await upload(client, a.sup_key, base, "menu.txt", b"hello"), 403)
    service.ctx.settings.knowledge_max_upload_bytes = 2048  # type: ignore[attr-defined]
    try:
        problem(await upload(client, a.admin_key, base, "big.txt", b"word " * 1000), 413)
    finally:
        service.ctx.settings.knowledge_max_upload_bytes = 10 * 1024 * 1024  # type: ignore[attr-defined]
    # every role reads; lists count what is stored
    listed = await ok(await client.get(f"/v1/knowledge-bases/{base}/documents", headers=bearer(a.sup_jwt)))
    assert [d["id"] for d in listed["items"]] == [doc["id"]]
    got = await ok(await client.get(f"/v1/knowledge-bases/{base}", headers=bearer(a.sup_key)))
    assert (got["documents"], got["chunks"]) == (1, doc["chunks"])
    # another tenant: a plain 404, never A's base
    problem(await client.get(f"/v1/knowledge-bases/{base}", headers=bearer(b.admin_key)), 404)
    problem(await upload(client, b.admin_key, base, "x.txt", b"injected"), 404)
    assert base not in (await client.get("/v1/knowledge-bases", headers=bearer(b.admin_key))).text

    # agents name only their tenant's bases, each once
    agent = await ok(await client.post("/v1/agents", json={"name": "kb agent", "knowledge_base_ids": [base]},
                                       headers=admin), 201)
    p = problem(await client.post("/v1/agents", json={"name": "thief", "knowledge_base_ids": [base]},
                                  headers=bearer(b.admin_key)), 422)
    assert p["errors"][0]["field"] == "body.knowledge_base_ids"
    problem(await client.post("/v1/agents", json={"knowledge_base_ids": [base, base]}, headers=admin), 422)
    problem(await client.post("/v1/agents", json={"knowledge_base_ids": ["k"] * 9}, headers=admin), 422)
    # a base in use cannot be deleted; detached, it can (with its documents and chunks)
    problem(await client.delete(f"/v1/knowledge-bases/{base}", headers=admin), 409)
    await ok(await client.patch(f"/v1/agents/{agent['id']}", json={"knowledge_base_ids": []}, headers=admin))
    await ok(await client.delete(f"/v1/knowledge-bases/{base}/documents/{doc['id']}", headers=admin), 204)
    problem(await client.delete(f"/v1/knowledge-bases/{base}/documents/{doc['id']}", headers=admin), 404)
    await ok(await client.delete(f"/v1/knowledge-bases/{base}", headers=admin), 204)
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM knowledge_chunks WHERE knowledge_base_id = $1", base) == 0
        actions = [r["action"] for r in await conn.fetch(
            "SELECT action FROM audit_log WHERE tenant_id = $1 AND resource_id = $2 ORDER BY id", a.id, base)]
    finally:
        await conn.close()
    assert actions == ["knowledge_base.create", "knowledge_document.create", "knowledge_document.delete",
                       "knowledge_base.delete"]


async def test_a_question_answered_from_an_uploaded_pdf_cites_it_and_tenants_stay_apart(
        client: httpx.AsyncClient, world: dict[str, TenantCreds], bus: InMemoryBus, brain: Any, llm: FakeOpenAI,
        database_url: str) -> None:
    a, b = world["A"], world["B"]
    base_a = await create_base(client, a, "Chez Example")
    await ok(await upload(client, a.admin_key, base_a, "menu.pdf", MENU_PDF), 201)
    base_b = await create_base(client, b, "Beta Corp")
    await ok(await upload(client, b.admin_key, base_b, "visitors.txt", B_NOTES), 201)
    prompt = "You are the host of Chez Example. Answer in one short sentence."
    agent_a = await ok(await client.post("/v1/agents", json={"name": "host", "system_prompt": prompt,
                                                             "knowledge_base_ids": [base_a]},
                                         headers=bearer(a.admin_key)), 201)
    agent_b = await ok(await client.post("/v1/agents", json={"name": "desk", "knowledge_base_ids": [base_b]},
                                         headers=bearer(b.admin_key)), 201)
    config_a = await agent_config(client, a.admin_key, agent_a["id"])
    config_b = await agent_config(client, b.admin_key, agent_b["id"])
    assert config_a.knowledge_base_ids == [base_a] and config_a.knowledge.top_k == 3
    for config in (config_a, config_b):
        await put_agent(bus, config)
    svc = await brain()

    call, done = await ask(bus, config_a, "Where can I park my car tonight?")
    # the prompt: the fixed system prompt first; the chunk with its source right before the caller's words (what
    # changes every turn goes last: the LLM server's prompt cache keeps the rest); nothing of tenant B
    messages = llm.requests[-1]["messages"]
    assert messages[0] == {"role": "system", "content": system_prompt(config_a)}
    (knowledge,) = knowledge_messages(llm.requests[-1])
    assert messages[-2]["content"] == knowledge and messages[-1]["role"] == "user"
    assert "[1] Source: menu.pdf" in knowledge and "Parking is free in the courtyard behind the restaurant" in knowledge
    assert "4711" not in json.dumps(llm.requests[-1])
    # the turn carries its sources; analytics stores them; the call detail shows them
    assert [(s.document_name, s.knowledge_base_id) for s in done.sources][:1] == [("menu.pdf", base_a)]
    assert all(s.knowledge_base_id == base_a for s in done.sources) and done.sources[0].score > 0
    await record(database_url, call)
    detail = await ok(await client.get(f"/v1/calls/{call.call_id}", headers=bearer(a.admin_key)))
    (agent_turn,) = [t for t in detail["turns"] if t["speaker"] == "agent" and t["turn_id"] == "t1"]
    assert agent_turn["sources"][0]["document_name"] == "menu.pdf"
    assert agent_turn["sources"][0]["chunk_id"] == done.sources[0].chunk_id
    (caller_turn,) = [t for t in detail["turns"] if t["speaker"] == "caller"]
    assert caller_turn["sources"] == []

    # tenant B asks the same: its own notes, never A's menu
    _, done_b = await ask(bus, config_b, "Where can I park my car tonight?")
    (knowledge_b,) = knowledge_messages(llm.requests[-1])
    assert "visitors.txt" in knowledge_b and "4711" in knowledge_b
    assert "menu.pdf" not in json.dumps(llm.requests[-1]) and "courtyard" not in json.dumps(llm.requests[-1])
    assert {s.knowledge_base_id for s in done_b.sources} == {base_b}
    # even a forged config naming A's base retrieves nothing for B: every query filters by the call's tenant
    assert await svc.knowledge.retrieve(b.id, [base_a], "Where can I park my car tonight?", 8) == []
    assert await svc.knowledge.retrieve(a.id, [base_a], "park", 8)
    # a misheard word finds the base's own word (trigram similarity over the base's words)
    (fixed, *_) = await svc.knowledge.retrieve(a.id, [base_a], "Is the courtyad open?", 3)
    assert "courtyard" in fixed.content and fixed.document_name == "menu.pdf"

    # a turn whose words match nothing gets no knowledge message and no sources
    _, none = await ask(bus, config_a, "Thanks, bye.")
    assert knowledge_messages(llm.requests[-1]) == [] and none.sources == []


async def test_without_a_database_url_knowledge_is_off_and_turns_go_on(
        client: httpx.AsyncClient, world: dict[str, TenantCreds], bus: InMemoryBus, brain: Any,
        llm: FakeOpenAI) -> None:
    a = world["A"]
    base = await create_base(client, a, "Off switch")
    await ok(await upload(client, a.admin_key, base, "hours.md", b"# Hours\n\nWe open at noon."), 201)
    agent = await ok(await client.post("/v1/agents", json={"name": "off", "knowledge_base_ids": [base]},
                                       headers=bearer(a.admin_key)), 201)
    config = await agent_config(client, a.admin_key, agent["id"])
    await put_agent(bus, config)
    svc = await brain(database_url=None)
    assert not svc.knowledge.enabled
    _, done = await ask(bus, config, "When do you open?")
    assert knowledge_messages(llm.requests[-1]) == [] and done.sources == []


@pytest.fixture(scope="module")
async def embedding_api(database_url: str, nats_url: str, llm: FakeOpenAI) -> AsyncIterator[httpx.AsyncClient]:
    """A second control-api replica with an embeddings endpoint (the test double's /v1/embeddings)."""
    svc = ControlApiService(make_settings(database_url, nats_url, embeddings_base_url=llm.base_url,
                                          embeddings_model="fake-embed", embeddings_batch=2))
    app = svc.app()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://control-api-2.test") as c:
            yield c


async def test_with_an_embeddings_endpoint_chunks_get_vectors_and_rank_semantically(
        embedding_api: httpx.AsyncClient, client: httpx.AsyncClient, world: dict[str, TenantCreds],
        bus: InMemoryBus, brain: Any, llm: FakeOpenAI, database_url: str) -> None:
    a = world["A"]
    base = await create_base(client, a, "Directions")
    text = "Where to find us: the old mill on Mill Lane."
    llm.embedding_requests.clear()
    doc = await ok(await upload(embedding_api, a.admin_key, base, "directions.txt", text.encode()), 201)
    assert doc["embedding_model"] == "fake-embed"
    assert llm.embedding_requests and llm.embedding_requests[0]["model"] == "fake-embed"
    conn = await asyncpg.connect(database_url)
    try:
        dims = await conn.fetch("SELECT array_length(embedding, 1) AS n FROM knowledge_chunks WHERE document_id = $1",
                                doc["id"])
    finally:
        await conn.close()
    assert [r["n"] for r in dims] == [EMBEDDING_DIMENSIONS] * doc["chunks"]
    agent = await ok(await client.post("/v1/agents", json={"name": "guide", "knowledge_base_ids": [base]},
                                       headers=bearer(a.admin_key)), 201)
    config = await agent_config(client, a.admin_key, agent["id"])
    await put_agent(bus, config)
    # "where" is an English stop word and too common to be a fuzzy term: only the vectors can match it
    question = "Where?"
    lexical_only = Knowledge(BrainSettings(nats_url="nats://unused:4222", database_url=database_url))
    await lexical_only.start()
    try:
        assert await lexical_only.retrieve(a.id, [base], question, 3) == []
    finally:
        await lexical_only.aclose()
    await brain(embeddings_base_url=llm.base_url, embeddings_model="fake-embed")
    llm.embedding_requests.clear()
    _, done = await ask(bus, config, question)
    assert [r["input"] for r in llm.embedding_requests] == [[question]]  # the caller's words, embedded once
    (knowledge,) = knowledge_messages(llm.requests[-1])
    assert "Source: directions.txt" in knowledge and "old mill on Mill Lane" in knowledge
    # score = 0.5 * lexical (0 here) + 0.5 * cosine
    assert [s.document_name for s in done.sources] == ["directions.txt"] and 0.1 < done.sources[0].score <= 0.5
