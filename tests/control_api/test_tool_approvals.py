"""A tool that requires a supervisor's approval, end to end on real NATS and PostgreSQL: brain (production
``openai`` adapter against the OpenAI-protocol double over HTTP) holds the call, analytics writes the ledger,
control-api lists it and takes the decision, brain runs the tool once and the agent tells the caller."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from voice_analytics.service import AnalyticsService
from voice_analytics.settings import AnalyticsSettings
from voice_brain.service import BrainService
from voice_brain.settings import BrainSettings
from voice_control_api.service import ControlApiService
from voice_devstack.stack import embedded_nats
from voice_runtime.bus import Bus
from voice_schemas import AgentConfig, events, subjects
from voice_schemas.agent import HttpTool

from ..brain.fake_openai import FakeOpenAI, Script
from ..brain.tool_server import ToolServer
from .conftest import make_settings
from .helpers import SECRETS_KEY, TenantCreds, bearer, ok, populate, problem
from .test_live_feed import LiveCall

pytestmark = pytest.mark.integration


@dataclass
class World:
    api: httpx.AsyncClient
    bus: Bus
    llm: FakeOpenAI
    tools: ToolServer
    a: TenantCreds
    b: TenantCreds


@pytest.fixture(scope="module")
async def world(database_url: str) -> AsyncIterator[World]:
    llm, tools = FakeOpenAI(), ToolServer()
    llm.start()
    tools.start()
    with embedded_nats() as nats_url:
        control = ControlApiService(make_settings(database_url, nats_url))
        app = control.app()
        analytics = AnalyticsService(AnalyticsSettings(nats_url=nats_url, database_url=database_url,
                                                       secrets_key=SECRETS_KEY, log_level="WARNING"))
        brain = BrainService(BrainSettings(nats_url=nats_url, llm_base_url=llm.base_url, secrets_key=SECRETS_KEY,
                                           egress_allow=f"127.0.0.1:{tools.port}", log_level="WARNING",
                                           shutdown_grace_s=1.0))
        async with app.router.lifespan_context(app):
            await analytics.start()
            await brain.start()
            bus = await Bus.connect(nats_url, "test")
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            try:
                async with httpx.AsyncClient(transport=transport, base_url="http://control-api.test") as api:
                    a = await populate(api, "approvals-a")
                    b = await populate(api, "approvals-b")
                    yield World(api, bus, llm, tools, a, b)
            finally:
                await bus.close()
                await brain.stop()
                await analytics.stop()
    llm.stop()
    tools.stop()


async def agent_with_booking(w: World, tenant_id: str) -> AgentConfig:
    tool = HttpTool(name="book_table", description="Book a table", method="POST", url=w.tools.base_url + "/bookings",
                    parameters={"type": "object", "required": ["people"],
                                "properties": {"people": {"type": "integer"}}},
                    requires_approval=True, approval_timeout_s=120, approval_line="Let me check with my manager.")
    agent = AgentConfig(id="appr" + subjects.new_id()[:10], tenant_id=tenant_id, version=1,
                        first_message="Hello.", tools=[tool])
    kv = (await w.bus.provision())["agents"]
    await kv.put(subjects.agent_version_key(agent.id, 1), agent.model_dump_json().encode())
    return agent


async def eventually(check: Any, timeout: float = 15.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = await check()
        if got:
            return got
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def tool_calls(w: World, key: str, call_id: str) -> list[dict[str, Any]]:
    return (await ok(await w.api.get(f"/v1/calls/{call_id}/tool-calls", headers=bearer(key))))["items"]


async def test_a_supervisor_approves_through_the_api_and_the_tool_runs_once(world: World) -> None:
    w = world
    w.llm.reset()
    w.tools.requests.clear()
    agent = await agent_with_booking(w, w.a.id)
    call = LiveCall(w.bus, w.a.id, agent.id)
    await call.start()
    await call.pub(events.CallAnswered())
    w.llm.queue[:] = [Script(text="", tool="book_table", tool_args={"people": 4})]
    await call.pub(events.TranscriptFinalized(utterance_id="u1", text="A table for four tonight."), turn_id="t1")

    async def pending() -> list[dict[str, Any]]:
        return [t for t in await tool_calls(w, w.a.admin_key, call.call_id) if t["approval"] == "pending"]

    (held,) = await eventually(pending)
    assert held["name"] == "book_table" and held["arguments"] == {"people": 4} and held["ok"] is None
    assert not w.tools.requests
    url = f"/v1/calls/{call.call_id}/tool-calls/{held['tool_call_id']}/decision"
    # another tenant sees neither the call nor its tool calls
    problem(await w.api.get(f"/v1/calls/{call.call_id}/tool-calls", headers=bearer(w.b.admin_key)), 404)
    problem(await w.api.post(url, json={"approved": True}, headers=bearer(w.b.admin_key)), 404)
    problem(await w.api.post(f"/v1/calls/{call.call_id}/tool-calls/nope/decision", json={"approved": True},
                             headers=bearer(w.a.admin_key)), 404)
    w.llm.queue[:] = [Script(text="Your table for four is booked.")]
    sent = await ok(await w.api.post(url, json={"approved": True, "comment": "regular guest"},
                                     headers=bearer(w.a.admin_key)), 202)
    assert sent["tool_call_id"] == held["tool_call_id"]

    async def done() -> list[dict[str, Any]]:
        return [t for t in await tool_calls(w, w.a.admin_key, call.call_id) if t["ok"] is not None]

    (row,) = await eventually(done)
    assert row["approval"] == "approved" and row["decided_by"] and row["decided_at"]
    assert row["decision_comment"] == "regular guest" and row["result"]["booking_id"] == "B-1"
    assert len(w.tools.requests) == 1 and json.loads(w.tools.requests[0]["body"]) == {"people": 4}
    # a second decision is refused: the call is no longer pending
    problem(await w.api.post(url, json={"approved": False}, headers=bearer(w.a.admin_key)), 409)
    # audited, without the arguments
    log = await ok(await w.api.get("/v1/audit-log", params={"action": "call.tool_decision"},
                                   headers=bearer(w.a.admin_key)))
    (entry,) = [e for e in log["items"] if e["resource_id"] == call.call_id]
    assert entry["details"]["approved"] is True and "people" not in json.dumps(entry)
    await call.end()


async def test_a_decision_on_an_ended_call_is_refused(world: World) -> None:
    w = world
    agent = await agent_with_booking(w, w.a.id)
    call = LiveCall(w.bus, w.a.id, agent.id)
    await call.start()
    await call.end()
    problem(await w.api.post(f"/v1/calls/{call.call_id}/tool-calls/tc-x/decision", json={"approved": True},
                             headers=bearer(w.a.admin_key)), 409)
