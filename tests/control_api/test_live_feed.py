"""Live feed (server-sent events of live calls, per call and per tenant) and whisper, against real NATS and
PostgreSQL with control-api in process behind a real HTTP server (httpx's ASGI transport buffers whole responses,
which an endless event stream never ends)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from voice_control_api.service import ControlApiService
from voice_runtime.bus import Bus
from voice_schemas import CallRecord, events, make, subjects
from voice_schemas.streams import KV_CALLS

from .helpers import TenantCreds, bearer, insert_call, ok, problem

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    b = await Bus.connect(nats_url, "test")
    await b.provision()
    yield b
    await b.close()


class LiveCall:
    """A call as ingress and the stages publish it: its live ``calls`` record and its events."""

    def __init__(self, bus: Bus, tenant_id: str, agent_id: str, call_id: str | None = None) -> None:
        self.bus, self.tenant_id, self.agent_id = bus, tenant_id, agent_id
        self.call_id = call_id or subjects.new_call_id()

    async def start(self) -> None:
        kv = (await self.bus.provision())[KV_CALLS.bucket]
        rec = CallRecord(call_id=self.call_id, tenant_id=self.tenant_id, agent_id=self.agent_id, agent_version=1)
        await kv.put(subjects.call_key(self.call_id), rec.model_dump_json().encode())
        await self.pub(events.CallStarted(agent_id=self.agent_id, agent_version=1, channel=events.Channel.test))

    async def pub(self, data: Any, **kw: Any) -> None:
        await self.bus.publish(make(data, tenant_id=self.tenant_id, call_id=self.call_id, **kw))

    async def conversation(self) -> None:
        """Everything a feed shows of a call, and events it does not (reply chunks, VAD, playout)."""
        await self.pub(events.CallAnswered())
        await self.pub(events.SpeechStarted(at_ms=10))
        await self.pub(events.TranscriptPartial(utterance_id="u1", text="my order"))
        await self.pub(events.TranscriptFinalized(utterance_id="u1", text="my order is late"), turn_id="t1")
        await self.pub(events.SentimentScored(speaker="caller", utterance_id="u1", compound=-0.4, label="negative"))
        await self.pub(events.ReplyChunk(index=0, text="Sorry to hear that.", final=True), turn_id="t1")
        await self.pub(events.ToolCallRequested(tool_call_id="tc1", name="lookup"), turn_id="t1")
        await self.pub(events.ToolResultReturned(tool_call_id="tc1", name="lookup"), turn_id="t1")
        await self.pub(
            events.TurnCompleted(caller_text="my order is late", agent_text="Sorry to hear that."), turn_id="t1"
        )

    async def end(self) -> None:
        kv = (await self.bus.provision())[KV_CALLS.bucket]
        await self.pub(events.CallEnded(reason=events.EndReason.caller_hangup))
        await kv.delete(subjects.call_key(self.call_id))


SHOWN = [
    "call.started",
    "call.answered",
    "transcript.partial",
    "transcript.final",
    "analytics.sentiment",
    "tool.call",
    "tool.result",
    "turn.completed",
    "call.ended",
]


class Sse:
    """An SSE client: the events (id, type, envelope) of one open stream."""

    def __init__(self, http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> None:
        self.http, self.url, self.headers = http, url, headers
        self.events: list[tuple[int, str, dict[str, Any]]] = []
        self.opened = asyncio.Event()
        self.status = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Sse:
        self._task = asyncio.create_task(self._read())
        await asyncio.wait_for(self.opened.wait(), 20)
        assert self.status == 200
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task

    async def _read(self) -> None:
        async with self.http.stream("GET", self.url, headers=self.headers) as r:
            self.status = r.status_code
            if r.status_code != 200:
                self.opened.set()
                return
            assert r.headers["content-type"].startswith("text/event-stream")
            fields: dict[str, str] = {}
            async for line in r.aiter_lines():
                if line.startswith(":"):
                    self.opened.set()  # the feed's first line: it reads from a fixed point from now on
                    continue
                if line:
                    name, _, value = line.partition(": ")
                    fields[name] = value
                    continue
                if "id" in fields:
                    self.events.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
                fields = {}

    async def until(self, n: int, timeout: float = 20.0) -> list[tuple[int, str, dict[str, Any]]]:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.events) < n:
            assert asyncio.get_running_loop().time() < deadline, f"saw {[e[1] for e in self.events]}"
            await asyncio.sleep(0.02)
        return self.events[:n]


@pytest.fixture(scope="module")
async def http(server: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server, timeout=httpx.Timeout(30.0)) as c:
        yield c


async def test_tenant_feed_shows_its_calls_in_order_none_of_another_tenant_and_resumes(
    http: httpx.AsyncClient, bus: Bus, world: dict[str, TenantCreds], database_url: str
) -> None:
    a, b = world["A"], world["B"]
    a_call_id = await insert_call(
        database_url, tenant_id=a.id, agent_id=a.resources["agent_admin"], status="in_progress"
    )  # analytics records the call from call.started
    call_a = LiveCall(bus, a.id, a.resources["agent_admin"], a_call_id)
    call_b = LiveCall(bus, b.id, b.resources["agent_admin"])
    async with (
        Sse(http, "/v1/live/events", bearer(a.admin_key)) as feed_a,
        Sse(http, "/v1/live/events", bearer(b.admin_key)) as feed_b,
    ):
        await call_a.start()
        await call_b.start()
        await call_b.conversation()
        await call_a.conversation()
        await call_a.end()
        await call_b.end()
        got = await feed_a.until(len(SHOWN))
        assert [t for _, t, _ in got] == SHOWN
        assert {e["tenant_id"] for _, _, e in got} == {a.id} and {e["call_id"] for _, _, e in got} == {a_call_id}
        seqs = [s for s, _, _ in got]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        got_b = await feed_b.until(len(SHOWN))
        assert {e["tenant_id"] for _, _, e in got_b} == {b.id}
        await asyncio.sleep(0.3)
        assert len(feed_a.events) == len(SHOWN)  # nothing else: never B's events

    # reconnect after the third event: the rest, from the stream, none again and none missing
    resume_after = seqs[2]
    async with Sse(http, "/v1/live/events", {**bearer(a.admin_key), "Last-Event-ID": str(resume_after)}) as again:
        rest = await again.until(len(SHOWN) - 3)
        assert [s for s, _, _ in rest] == seqs[3:]
        assert [t for _, t, _ in rest] == SHOWN[3:]


async def test_call_feed_replays_the_call_and_resumes(
    http: httpx.AsyncClient, bus: Bus, world: dict[str, TenantCreds], database_url: str
) -> None:
    a, b = world["A"], world["B"]
    call_id = await insert_call(
        database_url, tenant_id=a.id, agent_id=a.resources["agent_sup"], status="in_progress"
    )  # as analytics records it: an ended call stays readable
    call = LiveCall(bus, a.id, a.resources["agent_sup"], call_id)
    await call.start()
    await call.conversation()
    url = f"/v1/calls/{call.call_id}/events"
    async with Sse(http, url, bearer(a.sup_jwt)) as feed:  # the supervisor owning the call's agent
        got = await feed.until(len(SHOWN) - 1)
        await call.end()
        got = await feed.until(len(SHOWN))
    assert [t for _, t, _ in got] == SHOWN
    seqs = [s for s, _, _ in got]
    async with Sse(http, url, {**bearer(a.admin_key), "Last-Event-ID": str(seqs[4])}) as again:
        rest = await again.until(len(SHOWN) - 5)
        assert [s for s, _, _ in rest] == seqs[5:]
    # another tenant's admin, and a supervisor of another agent, get a plain 404
    problem(await http.get(url, headers=bearer(b.admin_key)), 404)
    other = LiveCall(bus, a.id, a.resources["agent_admin"])
    await other.start()
    problem(await http.get(f"/v1/calls/{other.call_id}/events", headers=bearer(a.sup_jwt)), 404)
    problem(await http.get(url), 401)
    problem(await http.get(url, headers=bearer("vk_not_a_key_at_all")), 401)
    problem(await http.get(url, headers={**bearer(a.admin_key), "Last-Event-ID": "12x"}), 422)
    problem(await http.get(f"/v1/calls/{subjects.new_call_id()}/events", headers=bearer(a.admin_key)), 404)
    await other.end()


async def test_a_supervisor_sees_only_their_agents_calls(
    http: httpx.AsyncClient, bus: Bus, world: dict[str, TenantCreds]
) -> None:
    a = world["A"]
    mine = LiveCall(bus, a.id, a.resources["agent_sup"])
    theirs = LiveCall(bus, a.id, a.resources["agent_admin"])
    async with (
        Sse(http, "/v1/live/events", bearer(a.sup_jwt)) as feed,
        Sse(http, "/v1/live/events", bearer(a.admin_jwt)) as admin_feed,
    ):
        await theirs.start()
        await mine.start()
        await theirs.conversation()
        await mine.conversation()
        await theirs.end()
        await mine.end()
        got = await feed.until(len(SHOWN))
        assert {e["call_id"] for _, _, e in got} == {mine.call_id}
        everything = await admin_feed.until(2 * len(SHOWN))
        assert {e["call_id"] for _, _, e in everything} == {mine.call_id, theirs.call_id}
        await asyncio.sleep(0.3)
        assert len(feed.events) == len(SHOWN)


async def test_feeds_per_credential_are_limited(
    http: httpx.AsyncClient, world: dict[str, TenantCreds], service: ControlApiService
) -> None:
    a = world["A"]
    limit = service.settings.live_feed_max_per_credential
    feeds = [Sse(http, "/v1/live/events", bearer(a.sup_key)) for _ in range(limit)]
    for f in feeds:
        await f.__aenter__()
    try:
        problem(await http.get("/v1/live/events", headers=bearer(a.sup_key)), 429)
    finally:
        for f in feeds:
            await f.__aexit__(None, None, None)
    await asyncio.sleep(0.2)
    async with Sse(http, "/v1/live/events", bearer(a.sup_key)):
        pass  # the slots were freed


async def test_whisper_reaches_the_call_is_audited_and_scoped(
    http: httpx.AsyncClient, bus: Bus, world: dict[str, TenantCreds]
) -> None:
    a, b = world["A"], world["B"]
    call = LiveCall(bus, a.id, a.resources["agent_sup"])
    await call.start()
    seen: list[Any] = []

    async def collect(msg: Any) -> None:
        seen.append(json.loads(msg.data))

    sub = await bus.subscribe(events.SupervisorWhispered.subject_for(call.call_id), collect)
    url = f"/v1/calls/{call.call_id}/whisper"
    sent = await ok(await http.post(url, json={"text": "Offer a refund."}, headers=bearer(a.sup_jwt)), 202)
    assert sent["call_id"] == call.call_id
    await ok(await http.post(url, json={"text": "Be brief."}, headers=bearer(a.admin_key)), 202)
    for _ in range(100):
        if len(seen) == 2:
            break
        await asyncio.sleep(0.02)
    await sub.unsubscribe()
    assert [s["data"]["text"] for s in seen] == ["Offer a refund.", "Be brief."]
    assert seen[0]["id"] == sent["event_id"] and seen[0]["tenant_id"] == a.id
    assert seen[0]["data"]["from_user"] == f"user:{a.sup_user}"

    log = await ok(
        await http.get(
            "/v1/audit-log", params={"resource_id": call.call_id, "action": "call.whisper"}, headers=bearer(a.admin_key)
        )
    )
    assert len(log["items"]) == 2 and "refund" not in str(log)
    assert log["items"][1]["actor_id"] == a.sup_user and log["items"][1]["details"]["chars"] == len("Offer a refund.")

    problem(await http.post(url, json={"text": "x"}, headers=bearer(b.admin_key)), 404)  # another tenant
    other = LiveCall(bus, a.id, a.resources["agent_admin"])
    await other.start()
    problem(await http.post(f"/v1/calls/{other.call_id}/whisper", json={"text": "x"}, headers=bearer(a.sup_jwt)), 404)
    problem(await http.post(url, json={"text": "x" * 1001}, headers=bearer(a.admin_key)), 422)
    problem(await http.post(url, json={"text": "   "}, headers=bearer(a.admin_key)), 422)
    problem(await http.post(url, json={"text": "x"}), 401)
    problem(
        await http.post(
            f"/v1/calls/{a.resources['call_sup']}/whisper", json={"text": "x"}, headers=bearer(a.admin_key)
        ),
        409,
    )  # a stored call that has ended
    problem(
        await http.post(f"/v1/calls/{subjects.new_call_id()}/whisper", json={"text": "x"}, headers=bearer(a.admin_key)),
        404,
    )
    await call.end()
    await other.end()
    problem(await http.post(url, json={"text": "x"}, headers=bearer(a.admin_key)), 404)  # ended, never stored
