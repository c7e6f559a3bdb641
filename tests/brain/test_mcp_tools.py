"""MCP servers as an agent's tools in brain: a real MCP server (the ``mcp`` package's ``MCPServer``, streamable HTTP
under uvicorn on a local port, allow-listed in EGRESS_ALLOW), the production ``openai`` adapter against the
OpenAI-protocol double (scripted: a tool call, then the reply that reads its result), sealed secrets and the egress
guard as in production."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from mcp.types import CallToolResult, ImageContent, TextContent
from voice_brain.mcp_tools import McpTool, McpTools, result_for_model
from voice_brain.tools import ToolFailed
from voice_runtime.egress import EgressPolicy
from voice_runtime.memory import InMemoryBus
from voice_runtime.secretbox import SecretBox
from voice_schemas import events, subjects
from voice_schemas.agent import AgentConfig, McpServerSpec
from voice_schemas.streams import KV_SECRETS

from .calls import Call, brains, make_agent
from .fake_openai import FakeOpenAI, Script
from .mcp_server import McpTestServer

pytestmark = pytest.mark.integration

SECRETS_KEY = base64.b64encode(os.urandom(32)).decode()
BOX = SecretBox(base64.b64decode(SECRETS_KEY))
TOKEN = "tok-mcp-secret-value"

Brain = Callable[..., Any]


@pytest.fixture(scope="module")
def mcp_server() -> Iterator[McpTestServer]:
    s = McpTestServer()
    s.start()
    yield s
    s.stop()


@pytest.fixture
async def bus() -> InMemoryBus:
    return InMemoryBus("test", max_backoff_s=30.0)


@pytest.fixture
async def brain(bus: InMemoryBus, openai_double: FakeOpenAI, mcp_server: McpTestServer) -> AsyncIterator[Brain]:
    openai_double.reset()
    mcp_server.clear()
    async with brains(bus, openai_double.base_url, secrets_key=SECRETS_KEY,
                      egress_allow=f"127.0.0.1:{mcp_server.port}", mcp_list_wait_s=5.0) as start:
        yield start


def shop(server: McpTestServer, **kw: Any) -> McpServerSpec:
    fields: dict[str, Any] = dict(name="shop", url=server.url,
                                  headers={"Authorization": "Bearer {{secret:shop-token}}"},
                                  allowed_tools=["lookup_order", "fail", {"name": "slow", "timeout_s": 1.0}])
    return McpServerSpec(**(fields | kw))


async def seal_secret(bus: InMemoryBus, tenant_id: str, name: str, value: str) -> None:
    kv = (await bus.provision())[KV_SECRETS.bucket]
    await kv.put(subjects.secret_key(tenant_id, name), BOX.seal(tenant_id, name, value))


def spoken(call: Call, turn_id: str) -> str:
    return " ".join(e.data.text for e in sorted(call.of(events.ReplyChunk, turn_id), key=lambda e: e.data.index)
                    if e.data.text)


def offered(request: dict[str, Any]) -> list[str]:
    return [t["function"]["name"] for t in request.get("tools", [])]


def tool_messages(request: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in request["messages"] if m["role"] == "tool"]


async def ask(call: Call, turn_id: str, text: str) -> None:
    await call.pub(events.TranscriptFinalized(utterance_id=f"u-{turn_id}", text=text), turn_id=turn_id)
    await call.wait(events.ReplyChunk, turn_id, final=True)


async def test_allowed_tools_are_listed_once_offered_and_called_through_a_turn(
        bus: InMemoryBus, brain: Brain, openai_double: FakeOpenAI, mcp_server: McpTestServer) -> None:
    await seal_secret(bus, "t-brain", "shop-token", TOKEN)
    await brain()
    agent = await make_agent(bus, mcp_servers=[shop(mcp_server)])
    openai_double.queue[:] = [
        Script(text="Let me check.", tool="shop__lookup_order", tool_args={"order_id": "A17"}),
        Script(text="Your order has shipped and arrives tomorrow."),
        Script(text="Anything else?"),
    ]
    async with Call(bus, agent) as call:
        await call.wait(events.ReplyChunk, "greeting")
        await ask(call, "t1", "Where is my order A17?")
        assert spoken(call, "t1") == "Let me check. Your order has shipped and arrives tomorrow."
        # only allow-listed tools, namespaced by the server; delete_everything is never offered
        first, second = openai_double.requests[-2:]
        assert offered(first) == ["end_call", "shop__lookup_order", "shop__fail", "shop__slow"]
        schema = first["tools"][1]["function"]["parameters"]
        assert schema["required"] == ["order_id"] and first["tools"][1]["function"]["description"]
        # the server ran it once, with the tenant's secret in the header (never shown to the model)
        assert mcp_server.calls == [("lookup_order", {"order_id": "A17"})]
        (rpc,) = [r for r in mcp_server.requests if r["method"] == "tools/call"]
        assert rpc["headers"]["authorization"] == f"Bearer {TOKEN}"
        assert TOKEN not in json.dumps(openai_double.requests)
        # announced and answered on the bus (durable events), the model read the structured result
        (called,) = call.of(events.ToolCallRequested, "t1")
        (result,) = call.of(events.ToolResultReturned, "t1")
        assert called.data.name == "shop__lookup_order" and called.data.arguments == {"order_id": "A17"}
        assert result.data.ok and result.data.result == {"order_id": "A17", "status": "shipped", "eta": "tomorrow"}
        (tool_msg,) = tool_messages(second)
        assert json.loads(tool_msg["content"]) == {"ok": True, "result": result.data.result}
        # a second turn of the same agent version: the listing is cached (one tools/list in all); the stored tool
        # round is in the next prompt
        await call.pub(events.PlayoutFinished(heard_chunks=[0, 1], cleared=False), turn_id="t1")
        await call.wait(events.TurnCompleted, "t1")
        await ask(call, "t2", "Thanks.")
        assert mcp_server.methods().count("tools/list") == 1
        third = openai_double.requests[-1]
        assert offered(third) == offered(first)
        assert [json.loads(m["content"])["ok"] for m in tool_messages(third)] == [True]


async def test_a_tool_error_goes_back_to_the_model_as_a_tool_error(
        bus: InMemoryBus, brain: Brain, openai_double: FakeOpenAI, mcp_server: McpTestServer) -> None:
    await seal_secret(bus, "t-brain", "shop-token", TOKEN)
    await brain()
    agent = await make_agent(bus, mcp_servers=[shop(mcp_server)])
    openai_double.queue[:] = [Script(text="", tool="shop__fail", tool_args={"reason": "kitchen closed"}),
                              Script(text="Sorry, the kitchen is closed.")]
    async with Call(bus, agent) as call:
        await call.wait(events.ReplyChunk, "greeting")
        await ask(call, "t1", "Can I order?")
        (result,) = call.of(events.ToolResultReturned, "t1")
        error = result.data.error or ""
        assert not result.data.ok and error.startswith("the tool reported an error: ") and "kitchen closed" in error
        (msg,) = tool_messages(openai_double.requests[-1])
        assert json.loads(msg["content"]) == {"ok": False, "error": error}
        assert spoken(call, "t1") == "Sorry, the kitchen is closed."


async def test_tools_outside_the_allow_list_and_bad_arguments_never_reach_the_server(
        bus: InMemoryBus, brain: Brain, openai_double: FakeOpenAI, mcp_server: McpTestServer) -> None:
    await seal_secret(bus, "t-brain", "shop-token", TOKEN)
    await brain()
    agent = await make_agent(bus, mcp_servers=[shop(mcp_server)])
    openai_double.queue[:] = [Script(text="", tool="shop__delete_everything"), Script(text="I can't do that."),
                              Script(text="", tool="shop__lookup_order", tool_args={"order_id": 17}),
                              Script(text="Which order?")]
    async with Call(bus, agent) as call:
        await call.wait(events.ReplyChunk, "greeting")
        await ask(call, "t1", "Delete everything.")
        (result,) = call.of(events.ToolResultReturned, "t1")
        assert not result.data.ok and "no tool named 'shop__delete_everything'" in (result.data.error or "")
        await call.pub(events.PlayoutFinished(heard_chunks=[0], cleared=False), turn_id="t1")
        await call.wait(events.TurnCompleted, "t1")
        await ask(call, "t2", "Order seventeen.")
        (result,) = call.of(events.ToolResultReturned, "t2")
        assert not result.data.ok and "invalid arguments" in (result.data.error or "")
        assert spoken(call, "t2") == "Which order?"
    assert mcp_server.calls == []
    assert "tools/call" not in mcp_server.methods()


async def test_a_slow_tool_times_out_with_its_filler_spoken(
        bus: InMemoryBus, brain: Brain, openai_double: FakeOpenAI, mcp_server: McpTestServer) -> None:
    await seal_secret(bus, "t-brain", "shop-token", TOKEN)
    await brain()
    server = shop(mcp_server, allowed_tools=[{"name": "slow", "timeout_s": 1.0, "filler": "Still looking.",
                                              "filler_after_ms": 100}])
    agent = await make_agent(bus, mcp_servers=[server])
    openai_double.queue[:] = [Script(text="", tool="shop__slow", tool_args={"seconds": 5}),
                              Script(text="That took too long.")]
    async with Call(bus, agent) as call:
        await call.wait(events.ReplyChunk, "greeting")
        await ask(call, "t1", "Take your time.")
        (result,) = call.of(events.ToolResultReturned, "t1")
        assert not result.data.ok and result.data.error == "no answer within 1 s"
        assert spoken(call, "t1") == "Still looking. That took too long."


async def test_an_internal_url_without_the_allow_list_is_refused(
        bus: InMemoryBus, brain: Brain, openai_double: FakeOpenAI, mcp_server: McpTestServer) -> None:
    await seal_secret(bus, "t-brain", "shop-token", TOKEN)
    await brain(egress_allow="")  # the MCP server on 127.0.0.1 is not allow-listed
    agent = await make_agent(bus, mcp_servers=[shop(mcp_server)])
    openai_double.queue[:] = [Script(text="Hello.")]
    async with Call(bus, agent) as call:
        await call.wait(events.ReplyChunk, "greeting")
        await ask(call, "t1", "Where is my order?")
        assert offered(openai_double.requests[-1]) == ["end_call"]  # nothing listed: nothing offered
    assert mcp_server.requests == []  # not one byte reached the server

    # and a call made anyway (a tool listed before the allow-list changed) is refused at connect time
    async def secret(tenant_id: str, name: str) -> str:
        return TOKEN

    tools = McpTools(EgressPolicy(), secret)
    spec = shop(mcp_server)
    tool = McpTool(name="shop__lookup_order", server=spec, tool="lookup_order", parameters={"type": "object"},
                   timeout_s=2.0)
    try:
        with pytest.raises(ToolFailed, match="internal address that is not allow-listed"):
            await tools.call("t-brain", tool, {"order_id": "A1"})
    finally:
        await tools.aclose()
    assert mcp_server.requests == []


async def test_a_server_that_is_down_offers_nothing_and_the_turn_goes_on(
        bus: InMemoryBus, brain: Brain, openai_double: FakeOpenAI, mcp_server: McpTestServer) -> None:
    await brain(egress_allow=f"127.0.0.1:{mcp_server.port},127.0.0.1:9")
    agent = await make_agent(bus, mcp_servers=[shop(mcp_server, name="down", url="http://127.0.0.1:9/mcp",
                                                    headers={}),
                                               shop(mcp_server, headers={})])
    openai_double.queue[:] = [Script(text="Hello.")]
    async with Call(bus, agent) as call:
        await call.wait(events.ReplyChunk, "greeting")
        await ask(call, "t1", "Hi.")
        assert offered(openai_double.requests[-1]) == ["end_call", "shop__lookup_order", "shop__fail", "shop__slow"]
        assert spoken(call, "t1") == "Hello."


async def test_a_tool_that_needs_approval_runs_once_approved(
        bus: InMemoryBus, brain: Brain, openai_double: FakeOpenAI, mcp_server: McpTestServer) -> None:
    await seal_secret(bus, "t-brain", "shop-token", TOKEN)
    await brain()
    server = shop(mcp_server, allowed_tools=[{"name": "lookup_order", "requires_approval": True,
                                              "approval_line": "Let me ask my manager."}])
    agent = await make_agent(bus, mcp_servers=[server])
    openai_double.queue[:] = [Script(text="", tool="shop__lookup_order", tool_args={"order_id": "B2"})]
    async with Call(bus, agent) as call:
        await call.wait(events.ReplyChunk, "greeting")
        await ask(call, "t1", "Where is order B2?")
        (asked,) = call.of(events.ToolApprovalRequested, "t1")
        assert spoken(call, "t1") == "Let me ask my manager." and mcp_server.calls == []  # nothing runs before
        await call.pub(events.PlayoutFinished(heard_chunks=[0], cleared=False), turn_id="t1")
        await call.wait(events.TurnCompleted, "t1")
        openai_double.queue[:] = [Script(text="Order B2 has shipped.")]
        await call.pub(events.ToolApprovalDecided(tool_call_id=asked.data.tool_call_id, approved=True,
                                                  decided_by="sup-1"))
        turn = f"tool-{asked.data.tool_call_id}"
        await call.wait(events.ReplyChunk, turn, final=True)
        assert spoken(call, turn) == "Order B2 has shipped."
        assert mcp_server.calls == [("lookup_order", {"order_id": "B2"})]
        (result,) = call.of(events.ToolResultReturned)
        assert result.data.ok and result.data.result["status"] == "shipped"


def test_results_are_bounded_and_errors_are_tool_errors() -> None:
    long = CallToolResult(content=[TextContent(text="é" * 5000), ImageContent(data="AA==", mime_type="image/png")])
    cut = result_for_model(long, 1000)
    assert isinstance(cut, str) and len(cut.encode()) <= 1000 and cut.endswith("…")
    structured = CallToolResult(content=[], structured_content={"rows": ["x" * 100] * 100})
    assert isinstance(result_for_model(structured, 512), str)  # too large: its JSON text, cut
    assert result_for_model(structured, 65_536) == {"rows": ["x" * 100] * 100}
    both = CallToolResult(content=[TextContent(text="a"), ImageContent(data="AA==", mime_type="image/png")])
    assert result_for_model(both, 100) == "a\n[image content]"
    with pytest.raises(ToolFailed, match="^the tool reported an error: " + "y" * 10):
        result_for_model(CallToolResult(content=[TextContent(text="y" * 5000)], is_error=True), 100_000)


async def test_listings_are_cached_per_agent_version_refreshed_in_the_background_and_bounded(
        mcp_server: McpTestServer) -> None:
    mcp_server.clear()
    now = [1000.0]

    async def secret(tenant_id: str, name: str) -> str:
        return TOKEN

    tools = McpTools(EgressPolicy.parse(f"127.0.0.1:{mcp_server.port}"), secret, wait_s=5.0, cache_entries=2,
                     clock=lambda: now[0])
    v1 = AgentConfig(id="a1", tenant_id="t1", version=1, mcp_servers=[shop(mcp_server, list_ttl_s=60)])
    try:
        tools.prefetch(v1)
        assert list(await tools.tools_for(v1)) == ["shop__lookup_order", "shop__fail", "shop__slow"]
        await tools.tools_for(v1)
        assert mcp_server.methods().count("tools/list") == 1
        now[0] += 61  # expired: the old listing is used at once while it is listed again
        assert list(await tools.tools_for(v1)) == ["shop__lookup_order", "shop__fail", "shop__slow"]
        await asyncio.sleep(0)
        for _ in range(200):
            if mcp_server.methods().count("tools/list") == 2 and not tools._listing:
                break
            await asyncio.sleep(0.02)
        assert mcp_server.methods().count("tools/list") == 2
        # another version is listed on its own; with room for two listings, the least recently used goes
        v2 = v1.model_copy(update={"version": 2})
        v3 = v1.model_copy(update={"version": 3})
        for agent in (v2, v3):
            await tools.tools_for(agent)
        assert mcp_server.methods().count("tools/list") == 4
        assert [k[2] for k in tools._cache] == [2, 3]
    finally:
        await tools.aclose()
