"""Agents' tools in brain: the production ``openai`` adapter against an OpenAI-protocol server over real HTTP, a
tenant's HTTP API on a local port, the egress guard and sealed secrets as in production.

The model is scripted per request (``FakeOpenAI.queue``): first a tool call, then the reply that reads its result.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from voice_brain.conversation import PENDING_APPROVAL
from voice_brain.service import BrainService
from voice_brain.settings import BrainSettings
from voice_runtime.bus import Bus
from voice_runtime.memory import InMemoryBus
from voice_runtime.secretbox import SecretBox
from voice_schemas import events, subjects
from voice_schemas.agent import EndCallTool, HttpTool, TransferCallTool, TransferTarget
from voice_schemas.streams import KV_SECRETS

from .calls import Call, brains, make_agent
from .fake_openai import FakeOpenAI, Script
from .tool_server import ToolServer

pytestmark = pytest.mark.integration

SECRETS_KEY = base64.b64encode(os.urandom(32)).decode()
BOX = SecretBox(base64.b64decode(SECRETS_KEY))
ORDER_TOKEN = "tok-orders-secret-value"

Brain = Callable[..., Any]


@pytest.fixture
async def bus() -> InMemoryBus:
    return InMemoryBus("test", max_backoff_s=30.0)  # a Later() comes back when it is due, as on NATS


@pytest.fixture
async def brain(bus: InMemoryBus, openai_double: FakeOpenAI, tool_server: ToolServer) -> AsyncIterator[Brain]:
    openai_double.reset()
    tool_server.requests.clear()
    async with brains(bus, openai_double.base_url, secrets_key=SECRETS_KEY,
                      egress_allow=f"127.0.0.1:{tool_server.port}") as start:
        yield start


def order_tool(server: ToolServer, **kw: Any) -> HttpTool:
    return HttpTool(
        name="lookup_order", description="Look up an order by its id",
        method="GET", url=server.base_url + "/orders/{order_id}",
        headers={"Authorization": "Bearer {{secret:orders-token}}"},
        parameters={"type": "object", "required": ["order_id"],
                    "properties": {"order_id": {"type": "string", "pattern": "^[A-Z][0-9]+$"}}},
        response_fields=["order.status", "order.eta"], **kw,
    )


async def seal_secret(bus: InMemoryBus, tenant_id: str, name: str, value: str) -> None:
    kv = (await bus.provision())[KV_SECRETS.bucket]
    await kv.put(subjects.secret_key(tenant_id, name), BOX.seal(tenant_id, name, value))


def spoken(call: Call, turn_id: str) -> str:
    return " ".join(e.data.text for e in sorted(call.of(events.ReplyChunk, turn_id), key=lambda e: e.data.index)
                    if e.data.text)


def tool_messages(request: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in request["messages"] if m["role"] == "tool"]


async def test_an_http_tool_runs_with_its_secret_and_the_model_reads_its_result(
        bus: InMemoryBus, brain: Brain, openai_double: FakeOpenAI, tool_server: ToolServer) -> None:
    await seal_secret(bus, "t-brain", "orders-token", ORDER_TOKEN)
    await brain()
    agent = await make_agent(bus, tools=[order_tool(tool_server)])
    openai_double.queue[:] = [Script(text="Let me check that.", tool="lookup_order", tool_args={"order_id": "A17"}),
                              Script(text="Your order has shipped and arrives tomorrow.")]
    async with Call(bus, agent) as call:
        await call.wait(events.ReplyChunk, "greeting")
        await call.pub(events.TranscriptFinalized(utterance_id="u1", text="Where is my order A17?"), turn_id="t1")
        await call.wait(events.ReplyChunk, "t1", final=True)
        assert spoken(call, "t1") == "Let me check that. Your order has shipped and arrives tomorrow."
        # the tenant's API got the call: placeholder in the path, the secret in the header
        (req,) = tool_server.requests
        assert (req["method"], req["path"]) == ("GET", "/orders/A17")
        assert req["headers"]["authorization"] == f"Bearer {ORDER_TOKEN}"
        # announced and answered on the bus; the model saw only the chosen fields, never the secret
        (called,) = call.of(events.ToolCallRequested, "t1")
        (result,) = call.of(events.ToolResultReturned, "t1")
        assert called.data.name == "lookup_order" and called.data.arguments == {"order_id": "A17"}
        assert result.data.ok and result.data.result == {"order.status": "shipped", "order.eta": "tomorrow"}
        assert result.data.tool_call_id == called.data.tool_call_id
        first, second = openai_double.requests[-2:]
        assert [t["function"]["name"] for t in first["tools"]] == ["end_call", "lookup_order"]
        (tool_msg,) = tool_messages(second)
        assert json.loads(tool_msg["content"]) == {"ok": True, "result": result.data.result}
        assert ORDER_TOKEN not in json.dumps(second)
        assert "internal_note" not in json.dumps(second)
        await call.pub(events.PlayoutFinished(heard_chunks=[0, 1], cleared=False), turn_id="t1")
        (done,) = await call.wait(events.TurnCompleted, "t1")
        # two completions' usage as the server reported it (the double counts words)
        assert done.data.usage.llm_output_tokens == 4 + 7 and not done.data.usage.llm_tokens_estimated
        assert done.data.usage.tts_characters == len("Let me check that.") + len(
            "Your order has shipped and arrives tomorrow.")


async def test_arguments_that_break_the_schema_never_reach_the_tenant_api(
        bus: InMemoryBus, brain: Brain, openai_double: FakeOpenAI, tool_server: ToolServer) -> None:
    await seal_secret(bus, "t-brain", "orders-token", ORDER_TOKEN)
    await brain()
    agent = await make_agent(bus, tools=[order_tool(tool_server)])
    openai_double.queue[:] = [Script(text="", tool="lookup_order", tool_args={"order_id": "../admin"}),
                              Script(text="Could you read me the order number again?")]
    async with Call(bus, agent) as call:
        await call.wait(events.ReplyChunk, "greeting")
        await call.pub(events.TranscriptFinalized(utterance_id="u1", text="My order is slash admin."), turn_id="t1")
        await call.wait(events.ReplyChunk, "t1", final=True)
        assert not tool_server.requests
        (result,) = call.of(events.ToolResultReturned, "t1")
        assert not result.data.ok and "invalid arguments" in (result.data.error or "")
        assert "does not match" in tool_messages(openai_double.requests[-1])[0]["content"]
        assert spoken(call, "t1") == "Could you read me the order number again?"


@pytest.mark.parametrize("path,expect", [("/fail", "HTTP 500"), ("/big", "y" * 100)])
async def test_a_failing_or_oversized_answer_goes_back_to_the_model_bounded(
        bus: InMemoryBus, brain: Brain, openai_double: FakeOpenAI, tool_server: ToolServer, path: str,
        expect: str) -> None:
    await brain()
    tool = HttpTool(name="probe", method="GET", url=tool_server.base_url + path, max_response_bytes=4096)
    agent = await make_agent(bus, tools=[tool])
    openai_double.queue[:] = [Script(text="", tool="probe"), Script(text="Here is what I found.")]
    async with Call(bus, agent) as call:
        await call.wait(events.ReplyChunk, "greeting")
        await call.pub(events.TranscriptFinalized(utterance_id="u1", text="Check it."), turn_id="t1")
        await call.wait(events.ReplyChunk, "t1", final=True)
        (msg,) = tool_messages(openai_double.requests[-1])
        assert expect in msg["content"] and len(msg["content"]) <= 1500
        assert spoken(call, "t1") == "Here is what I found."


async def test_an_internal_address_is_refused_by_the_guard(
        bus: InMemoryBus, brain: Brain, openai_double: FakeOpenAI, tool_server: ToolServer) -> None:
    await brain(egress_allow="")  # the tenant API on 127.0.0.1 is no longer allow-listed
    tool = HttpTool(name="probe", method="GET", url=tool_server.base_url + "/orders/A1")
    agent = await make_agent(bus, tools=[tool])
    openai_double.queue[:] = [Script(text="", tool="probe"), Script(text="I could not reach it.")]
    async with Call(bus, agent) as call:
        await call.wait(events.ReplyChunk, "greeting")
        await call.pub(events.TranscriptFinalized(utterance_id="u1", text="Check it."), turn_id="t1")
        await call.wait(events.ReplyChunk, "t1", final=True)
        assert not tool_server.requests
        (result,) = call.of(events.ToolResultReturned, "t1")
        assert not result.data.ok and "request failed" in (result.data.error or "")


async def test_a_slow_tool_gets_its_filler_spoken_while_it_runs(
        bus: InMemoryBus, brain: Brain, openai_double: FakeOpenAI, tool_server: ToolServer) -> None:
    await brain()
    tool_server.slow_s = 1.0
    tool = HttpTool(name="slow_lookup", method="GET", url=tool_server.base_url + "/slow",
                    filler="Still looking, one moment.", filler_after_ms=200)
    agent = await make_agent(bus, tools=[tool])
    openai_double.queue[:] = [Script(text="", tool="slow_lookup"), Script(text="Found it.")]
    async with Call(bus, agent) as call:
        await call.wait(events.ReplyChunk, "greeting")
        await call.pub(events.TranscriptFinalized(utterance_id="u1", text="Look it up."), turn_id="t1")
        await call.wait(events.ReplyChunk, "t1", final=True)
        assert spoken(call, "t1") == "Still looking, one moment. Found it."


async def test_transfer_goes_to_the_named_destination_after_the_reply(
        bus: InMemoryBus, brain: Brain, openai_double: FakeOpenAI) -> None:
    await brain()
    tool = TransferCallTool(destinations=[TransferTarget(name="billing", target="+4930123456")])
    agent = await make_agent(bus, tools=[tool, EndCallTool()])
    openai_double.queue[:] = [Script(text="", tool="transfer_call", tool_args={"destination": "billing"}),
                              Script(text="I'm putting you through to billing now.")]
    async with Call(bus, agent) as call:
        await call.wait(events.ReplyChunk, "greeting")
        await call.pub(events.TranscriptFinalized(utterance_id="u1", text="Billing please."), turn_id="t1")
        (transfer,) = await call.wait(events.Transfer, "t1")
        assert transfer.data.target == "+4930123456" and transfer.data.after_playout
        assert spoken(call, "t1") == "I'm putting you through to billing now."
        # the model never saw the number, only the destination's name
        assert "+4930123456" not in json.dumps(openai_double.requests)
        # a destination the agent does not have is a tool error, and nothing is transferred
        openai_double.queue[:] = [Script(text="", tool="transfer_call", tool_args={"destination": "+1900"}),
                                  Script(text="I can't transfer you there.")]
        await call.pub(events.TranscriptFinalized(utterance_id="u2", text="Transfer me to 1900."), turn_id="t2")
        await call.wait(events.ReplyChunk, "t2", final=True)
        assert not call.of(events.Transfer, "t2")
        (result,) = call.of(events.ToolResultReturned, "t2")
        assert not result.data.ok


# ---------------------------------------------------------------- supervisor approval
def booking_tool(server: ToolServer, timeout_s: float = 60.0) -> HttpTool:
    return HttpTool(name="book_table", description="Book a table", method="POST", url=server.base_url + "/bookings",
                    parameters={"type": "object", "required": ["people"],
                                "properties": {"people": {"type": "integer", "minimum": 1, "maximum": 12}}},
                    requires_approval=True, approval_timeout_s=timeout_s,
                    approval_line="Let me check with my manager.")


async def ask_for_booking(call: Call, openai_double: FakeOpenAI) -> events.ToolApprovalRequested:
    openai_double.queue[:] = [Script(text="", tool="book_table", tool_args={"people": 4})]
    await call.wait(events.ReplyChunk, "greeting")
    await call.pub(events.TranscriptFinalized(utterance_id="u1", text="A table for four please."), turn_id="t1")
    (asked,) = await call.wait(events.ToolApprovalRequested, "t1")
    await call.wait(events.ReplyChunk, "t1", final=True)
    assert spoken(call, "t1") == "Let me check with my manager."
    await call.pub(events.PlayoutFinished(heard_chunks=[0], cleared=False), turn_id="t1")
    await call.wait(events.TurnCompleted, "t1")
    return asked.data


async def test_an_approved_tool_runs_once_and_the_agent_tells_the_caller(
        bus: InMemoryBus, brain: Brain, openai_double: FakeOpenAI, tool_server: ToolServer) -> None:
    await brain()
    agent = await make_agent(bus, tools=[booking_tool(tool_server)])
    async with Call(bus, agent) as call:
        asked = await ask_for_booking(call, openai_double)
        assert asked.name == "book_table" and asked.arguments == {"people": 4}
        assert not tool_server.requests  # nothing runs before the decision
        openai_double.queue[:] = [Script(text="Good news, your table for four is booked.")]
        decision = events.ToolApprovalDecided(tool_call_id=asked.tool_call_id, approved=True, decided_by="sup-1")
        await call.pub(decision)
        await call.pub(decision)  # the same decision again (a redelivery, a double click): nothing more
        turn = f"tool-{asked.tool_call_id}"
        await call.wait(events.ReplyChunk, turn, final=True)
        assert spoken(call, turn) == "Good news, your table for four is booked."
        await bus.settle()
        (req,) = tool_server.requests
        assert json.loads(req["body"]) == {"people": 4}
        (result,) = call.of(events.ToolResultReturned)
        assert result.data.ok and result.data.result["booking_id"] == "B-1"
        tool_msg = tool_messages(openai_double.requests[-1])[0]
        assert "B-1" in tool_msg["content"] and tool_msg["content"] != PENDING_APPROVAL


async def test_a_denied_tool_never_runs(bus: InMemoryBus, brain: Brain, openai_double: FakeOpenAI,
                                        tool_server: ToolServer) -> None:
    await brain()
    agent = await make_agent(bus, tools=[booking_tool(tool_server)])
    async with Call(bus, agent) as call:
        asked = await ask_for_booking(call, openai_double)
        openai_double.queue[:] = [Script(text="Sorry, I can't book that table.")]
        await call.pub(events.ToolApprovalDecided(tool_call_id=asked.tool_call_id, approved=False,
                                                  decided_by="sup-1", comment="fully booked"))
        turn = f"tool-{asked.tool_call_id}"
        await call.wait(events.ReplyChunk, turn, final=True)
        assert not tool_server.requests
        (result,) = call.of(events.ToolResultReturned)
        assert not result.data.ok and "denied" in (result.data.error or "")
        prompt = json.dumps(openai_double.requests[-1]["messages"])
        assert "fully booked" in prompt


async def test_a_caller_who_speaks_meanwhile_is_answered_and_the_approval_stays_pending(
        bus: InMemoryBus, brain: Brain, openai_double: FakeOpenAI, tool_server: ToolServer) -> None:
    await brain()
    agent = await make_agent(bus, tools=[booking_tool(tool_server)])
    async with Call(bus, agent) as call:
        asked = await ask_for_booking(call, openai_double)
        openai_double.queue[:] = [Script(text="Yes, we have vegan options.")]
        await call.pub(events.TranscriptFinalized(utterance_id="u2", text="Do you have vegan food?"), turn_id="t2")
        await call.wait(events.ReplyChunk, "t2", final=True)
        assert spoken(call, "t2") == "Yes, we have vegan options."
        # the model saw the held call as pending
        assert tool_messages(openai_double.requests[-1])[0]["content"] == PENDING_APPROVAL
        await call.pub(events.PlayoutFinished(heard_chunks=[0], cleared=False), turn_id="t2")
        await call.wait(events.TurnCompleted, "t2")
        openai_double.queue[:] = [Script(text="Your table is booked.")]
        await call.pub(events.ToolApprovalDecided(tool_call_id=asked.tool_call_id, approved=True, decided_by="s"))
        await call.wait(events.ReplyChunk, f"tool-{asked.tool_call_id}", final=True)
        assert len(tool_server.requests) == 1


async def test_no_decision_in_time_is_a_denial(bus: InMemoryBus, brain: Brain, openai_double: FakeOpenAI,
                                               tool_server: ToolServer) -> None:
    await brain()
    agent = await make_agent(bus, tools=[booking_tool(tool_server, timeout_s=5.0)])
    async with Call(bus, agent) as call:
        asked = await ask_for_booking(call, openai_double)
        openai_double.queue[:] = [Script(text="I'm sorry, I couldn't get that approved.")]
        (decided,) = await call.wait(events.ToolApprovalDecided, timeout=15.0)
        assert decided.data.tool_call_id == asked.tool_call_id
        assert (decided.data.approved, decided.data.decided_by) == (False, "timeout")
        await call.wait(events.ReplyChunk, f"tool-{asked.tool_call_id}", final=True)
        assert not tool_server.requests
        # a supervisor who approves too late changes nothing
        await call.pub(events.ToolApprovalDecided(tool_call_id=asked.tool_call_id, approved=True, decided_by="s"))
        await bus.settle()
        assert not tool_server.requests and len(call.of(events.ToolResultReturned)) == 1


# ---------------------------------------------------------------- on NATS, across replicas
@pytest.fixture
async def nats_bus(private_nats_url: str) -> AsyncIterator[Bus]:
    b = await Bus.connect(private_nats_url, "test")
    await b.provision()
    yield b
    await b.close()


async def nats_brain(url: str, openai_double: FakeOpenAI, tool_server: ToolServer) -> BrainService:
    svc = BrainService(BrainSettings(nats_url=url, llm_base_url=openai_double.base_url, secrets_key=SECRETS_KEY,
                                     egress_allow=f"127.0.0.1:{tool_server.port}", shutdown_grace_s=1.0))
    await svc.start()
    return svc


@pytest.mark.parametrize("decision", ["approved-elsewhere", "timeout-elsewhere"])
async def test_a_held_call_is_resumed_by_another_replica_after_the_first_one_is_gone(
        private_nats_url: str, nats_bus: Bus, openai_double: FakeOpenAI, tool_server: ToolServer,
        decision: str) -> None:
    """The pending approval lives in the call's history and the timeout in the stream: the replica that asked
    stops, another one (started only then) acts on the decision, or on the timeout it never saw being set."""
    openai_double.reset()
    tool_server.requests.clear()
    first = await nats_brain(private_nats_url, openai_double, tool_server)
    agent = await make_agent(nats_bus, tools=[booking_tool(tool_server, timeout_s=5.0)])
    second: BrainService | None = None
    try:
        async with Call(nats_bus, agent) as call:
            asked = await ask_for_booking(call, openai_double)
            await first.stop()
            second = await nats_brain(private_nats_url, openai_double, tool_server)
            openai_double.queue[:] = [Script(text="All set, your table is booked." if decision == "approved-elsewhere"
                                             else "Sorry, I couldn't get that approved.")]
            if decision == "approved-elsewhere":
                await call.pub(events.ToolApprovalDecided(tool_call_id=asked.tool_call_id, approved=True,
                                                          decided_by="sup"))
            turn = f"tool-{asked.tool_call_id}"
            await call.wait(events.ReplyChunk, turn, final=True, timeout=20.0)
            (result,) = call.of(events.ToolResultReturned)
            if decision == "approved-elsewhere":
                assert result.data.ok and len(tool_server.requests) == 1
            else:
                assert not result.data.ok and not tool_server.requests
                (decided,) = call.of(events.ToolApprovalDecided)
                assert decided.data.decided_by == "timeout"
    finally:
        if second is not None:
            await second.stop()
