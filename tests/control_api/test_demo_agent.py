"""`make run`'s demo default agent: the environment `make run` gives the services seeds the default agent with a
knowledge base of the restaurant's documents, the ``book_table`` HTTP tool and intents with cached answers; the
sample booking service (started as `make run` starts it) books a table, reached through brain's egress guard only
because `make run` puts it on the allow-list."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest
from voice_brain.intents import IntentClassifier, decide
from voice_brain.tools import HttpTools, ToolFailed
from voice_control_api.usecases.bootstrap import stored_default_agent
from voice_devstack import demo
from voice_devstack.stack import demo_note, free_port, port_open
from voice_runtime.egress import EgressPolicy
from voice_schemas.agent import AgentConfig, HttpTool

from .conftest import make_settings
from .helpers import BOOTSTRAP_KEY, bearer, ok

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def booking_service() -> Iterator[int]:
    """The booking service as `make run` starts it (its own process on loopback)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "voice_devstack.booking", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not port_open("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


def next_weekday(weekday: int) -> date:
    """The next date (from tomorrow) falling on ``weekday`` (0 Monday)."""
    day = date.today() + timedelta(days=1)
    return day + timedelta(days=(weekday - day.weekday()) % 7)


def test_make_run_allow_lists_the_booking_service_and_writes_the_spec(tmp_path: Path) -> None:
    env = demo.demo_env({"EGRESS_ALLOW": "10.0.0.5:443", "DEMO_BOOKING_PORT": "8123"}, tmp_path)
    assert env["EGRESS_ALLOW"] == "10.0.0.5:443,127.0.0.1:8123", "the user's entries kept, the service added"
    assert Path(env["BOOTSTRAP_DEFAULT_AGENT_SPEC"]).is_file()
    assert demo.demo_env({"DEMO_AGENT": "false"}, tmp_path) == {} and demo_note({"DEMO_AGENT": "off"}) == []
    assert "127.0.0.1:8123/bookings" in " ".join(demo_note({"DEMO_BOOKING_PORT": "8123"}))
    with pytest.raises(SystemExit):
        demo.demo_env({"DEMO_BOOKING_PORT": "http"}, tmp_path)


async def test_the_booking_service_books_a_table(booking_service: int) -> None:
    url = demo.booking_url(booking_service)
    saturday = next_weekday(5).isoformat()
    async with httpx.AsyncClient(timeout=5) as c:
        r = await c.post(url, json={"name": "Ada", "party_size": 4, "date": saturday, "time": "19:30"})
        assert r.status_code == 201, r.text
        booking = r.json()
        assert booking["status"] == "confirmed" and booking["booking_id"].startswith("HL-")
        assert (await c.get(f"{url}/{booking['booking_id']}")).json() == booking
        monday = next_weekday(0).isoformat()
        r = await c.post(url, json={"name": "Ada", "party_size": 4, "date": monday, "time": "19:30"})
        assert r.status_code == 409 and "Mondays" in r.json()["error"]
        r = await c.post(url, json={"name": "Ada", "party_size": 40, "date": saturday, "time": "19:30"})
        assert r.status_code == 422 and r.json()["error"].startswith("party_size")
        assert (await c.post(url, content=b"{nope")).status_code == 422


async def test_the_default_agent_is_seeded_with_knowledge_a_booking_tool_and_intents(
        client: httpx.AsyncClient, database_url: str, nats_url: str, booking_service: int, tmp_path: Path) -> None:
    env = demo.demo_env({"DEMO_BOOKING_PORT": str(booking_service)}, tmp_path)
    agent_id = "demo-" + uuid.uuid4().hex[:12]
    settings = make_settings(database_url, nats_url, default_agent_id=agent_id,
                             bootstrap_default_agent_spec=Path(env["BOOTSTRAP_DEFAULT_AGENT_SPEC"]),
                             egress_allow=env["EGRESS_ALLOW"])
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        await stored_default_agent(pool, settings)
        await stored_default_agent(pool, settings)  # a restart: the stored agent is kept, nothing seeded twice
    finally:
        await pool.close()

    admin = bearer(BOOTSTRAP_KEY)  # the bootstrap key is an admin of the default tenant
    agent = await ok(await client.get(f"/v1/agents/{agent_id}", headers=admin))
    assert agent["version"] == 1 and agent["name"] == "Harbour Lights Bistro (demo)"
    # 1. the knowledge base with the three documents shipped in the repository
    (kb_id,) = agent["knowledge_base_ids"]
    kb = await ok(await client.get(f"/v1/knowledge-bases/{kb_id}", headers=admin))
    assert kb["documents"] == 3 and kb["chunks"] >= 3
    docs = await ok(await client.get(f"/v1/knowledge-bases/{kb_id}/documents", headers=admin))
    assert sorted(d["name"] for d in docs["items"]) == ["hours.md", "menu.md", "parking.md"]
    # 2. the booking tool, pointing at the booking service
    (tool,) = [t for t in agent["tools"] if t["type"] == "http"]
    assert tool["name"] == "book_table" and tool["url"] == demo.booking_url(booking_service)
    # 3. intents for the hours and the address with cached answers
    by_name = {i["name"]: i for i in agent["intents"]}
    assert by_name["opening_hours"]["answer"] == demo.HOURS and by_name["address"]["answer"] == demo.ADDRESS

    config = AgentConfig.model_validate({**agent, "tenant_id": agent["tenant_id"]})
    classifier = IntentClassifier("minilm", models_dir=tmp_path / "models")
    await classifier.start()
    try:
        for text, name, answer in [("what time do you open tomorrow", "opening_hours", demo.HOURS),
                                   ("what's your address", "address", demo.ADDRESS)]:
            decision = decide(config, await classifier.classify(config, text))
            assert decision is not None and decision.intent.name == name and decision.intent.cached, text
            assert decision.completion is not None
            assert [d.text async for d in decision.completion] == [answer]
    finally:
        await classifier.aclose()

    # brain's book_table call reaches the service through the egress guard with make run's allow-list, not without
    spec = HttpTool.model_validate(tool)
    args = {"name": "Grace", "party_size": 2, "date": next_weekday(3).isoformat(), "time": "20:00"}

    async def no_secret(tenant_id: str, name: str) -> str:
        raise AssertionError("the demo tool uses no secret")

    allowed = HttpTools(EgressPolicy.parse(env["EGRESS_ALLOW"]), no_secret)
    guarded = HttpTools(EgressPolicy.parse(""), no_secret)
    try:
        result = await allowed.call(agent["tenant_id"], spec, args)
        assert result["status"] == "confirmed" and result["party_size"] == 2 and result["booking_id"]
        with pytest.raises(ToolFailed):
            await guarded.call(agent["tenant_id"], spec, args)
    finally:
        await allowed.aclose()
        await guarded.aclose()
