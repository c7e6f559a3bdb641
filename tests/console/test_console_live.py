"""Live supervision in a real browser: the live calls list, one call followed through its live feed (transcript,
sentiment, a tool call waiting for approval), and the page's actions reaching the bus as the commands brain and
ingress act on (a decision, a whisper, the end of the call)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from playwright.async_api import Page, expect
from voice_runtime.bus import Bus
from voice_schemas import CallRecord, Envelope, events, make, parse, subjects
from voice_schemas.streams import KV_CALLS

from ..control_api.helpers import PASSWORD, insert_call
from .conftest import ConsoleServer, Tenant, sign_in

pytestmark = pytest.mark.e2e


class LiveCall:
    """A call as ingress, brain and analytics would make it: live record in KV, row in PostgreSQL, events."""

    def __init__(self, bus: Bus, tenant_id: str, agent_id: str, call_id: str) -> None:
        self.bus, self.tenant_id, self.agent_id, self.call_id = bus, tenant_id, agent_id, call_id
        self.commands: list[Envelope[Any]] = []

    async def start(self) -> None:
        kv = (await self.bus.provision())[KV_CALLS.bucket]
        rec = CallRecord(call_id=self.call_id, tenant_id=self.tenant_id, agent_id=self.agent_id, agent_version=1)
        await kv.put(subjects.call_key(self.call_id), rec.model_dump_json().encode())

        async def keep(msg: Any) -> None:
            env = parse(msg.data)
            if isinstance(env.data, events.ToolApprovalDecided | events.SupervisorWhispered | events.HangUp):
                self.commands.append(env)

        await self.bus.subscribe(subjects.call_wildcard(self.call_id), keep)

    async def pub(self, data: Any, **kw: Any) -> None:
        await self.bus.publish(make(data, tenant_id=self.tenant_id, call_id=self.call_id, **kw))

    async def command(self, cls: type, timeout: float = 15.0) -> Envelope[Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            for env in self.commands:
                if isinstance(env.data, cls):
                    return env
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {cls.__name__} on the bus")


@pytest.fixture
async def bus(console_server: ConsoleServer) -> AsyncIterator[Bus]:
    b = await Bus.connect(console_server.nats_url, "test")
    await b.provision()
    yield b
    await b.close()


async def held_tool_call(database_url: str, call: LiveCall, tool_call_id: str) -> None:
    """The ledger row analytics writes from ``tool.approval_requested`` (analytics is not running here)."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO tool_calls (tool_call_id, call_id, tenant_id, turn_id, name, arguments, called_at, approval)"
            " VALUES ($1, $2, $3, 't1', 'book_table', '{\"people\": 4}'::jsonb, now(), 'pending')",
            tool_call_id, call.call_id, call.tenant_id,
        )
    finally:
        await conn.close()


async def test_a_supervisor_follows_a_live_call_and_acts_on_it(
        page: Page, tenants: dict[str, Tenant], console_server: ConsoleServer, bus: Bus) -> None:
    t = tenants["A"]
    call_id = await insert_call(console_server.database_url, tenant_id=t.id, agent_id=t.ids["agent_admin"],
                                status="in_progress")
    call = LiveCall(bus, t.id, t.ids["agent_admin"], call_id)
    await call.start()
    await call.pub(events.CallStarted(agent_id=call.agent_id, agent_version=1, channel=events.Channel.twilio))
    await call.pub(events.CallAnswered())
    await call.pub(events.TranscriptFinalized(utterance_id="u1", text="This is <b>terrible</b>, book a table"),
                   turn_id="t1")
    await call.pub(events.SentimentScored(speaker="caller", utterance_id="u1", compound=-0.6, label="negative",
                                          rolling=-0.6))
    await call.pub(events.SentimentAlert(utterance_id="u1", rolling=-0.6, threshold=-0.5))
    await call.pub(events.ToolCallRequested(tool_call_id="tc-live1", name="book_table", arguments={"people": 4}),
                   turn_id="t1")
    await call.pub(events.ToolApprovalRequested(tool_call_id="tc-live1", name="book_table",
                                                arguments={"people": 4}, timeout_s=60), turn_id="t1")
    await held_tool_call(console_server.database_url, call, "tc-live1")

    await sign_in(page, t.admin_email, PASSWORD)
    await page.goto("/live")
    row = page.locator(f"tr[data-call-id='{call_id}']")
    await expect(row).to_be_visible()
    await row.locator("a").click()
    await expect(page).to_have_url(f"{console_server.url}/live/{call_id}")
    # what happened before the page opened is replayed from the call's start
    caller = page.get_by_test_id("live-turn-caller")
    await expect(caller).to_contain_text("This is <b>terrible</b>, book a table")  # shown as text, never as HTML
    await expect(page.get_by_test_id("sentiment")).to_contain_text("negative")
    await expect(page.get_by_test_id("sentiment-alert")).to_be_visible()
    card = page.locator("[data-tool-call-id='tc-live1']")
    await expect(card).to_contain_text("waiting for approval")
    await expect(card).to_contain_text('{"people":4}')
    # and what happens now arrives live
    await call.pub(events.TurnCompleted(caller_text="book a table", agent_text="Let me check with my manager."),
                   turn_id="t1")
    await expect(page.get_by_test_id("live-turn-agent")).to_contain_text("Let me check with my manager.")

    await card.get_by_role("button", name="Approve").click()
    decided = await call.command(events.ToolApprovalDecided)
    assert decided.data.tool_call_id == "tc-live1" and decided.data.approved
    await call.pub(decided.data, turn_id="t1")  # as the bus carries it to the feed
    await expect(card).to_contain_text("approved by")

    await page.locator("#whisper-text").fill("Offer a window seat.")
    await page.get_by_role("button", name="Whisper").click()
    whispered = await call.command(events.SupervisorWhispered)
    assert whispered.data.text == "Offer a window seat."
    await expect(page.get_by_test_id("whisper-result")).to_have_text("Sent.")

    page.once("dialog", lambda d: asyncio.ensure_future(d.accept()))
    await page.get_by_test_id("end-call").click()
    hangup = await call.command(events.HangUp)
    assert hangup.data.reason == events.EndReason.supervisor and not hangup.data.after_playout
    await call.pub(events.CallEnded(reason=events.EndReason.supervisor))
    await expect(page.get_by_test_id("live-status")).to_contain_text("ended (supervisor)")


async def test_another_tenant_cannot_open_the_live_call(page: Page, tenants: dict[str, Tenant],
                                                        console_server: ConsoleServer) -> None:
    a, b = tenants["A"], tenants["B"]
    call_id = await insert_call(console_server.database_url, tenant_id=a.id, agent_id=a.ids["agent_admin"],
                                status="in_progress")
    await sign_in(page, b.admin_email, PASSWORD)
    await page.goto("/live")
    await expect(page.locator(f"tr[data-call-id='{call_id}']")).to_have_count(0)
    response = await page.goto(f"/live/{call_id}")
    assert response is not None and response.status == 404
