"""Text chats in ingress (``transports/chat.py``) with the real brain (a scripted chat model) on the in-memory bus.

The test plays control-api: it mints call tokens and sends the core requests control-api sends
(``voice_schemas.chat``), then checks the answers and what reached the bus.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.js.errors import KeyNotFoundError
from pydantic import BaseModel
from voice_brain.chat import ToolCall
from voice_brain.service import BrainService
from voice_brain.settings import BrainSettings
from voice_runtime import calltoken
from voice_runtime.bus import NoResponders
from voice_schemas import AgentConfig, events, subjects
from voice_schemas import chat as rpc
from voice_schemas.chat import ChatAnswer, ChatError

from ..brain.fakes import FakeChatProvider, FakeReply
from .fakes import Ingress

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

KEY = base64.b64encode(os.urandom(32)).decode()
TENANT = "tenant-a"


class Chats:
    """Ingress (and brain, when asked) on one in-memory bus, driven the way control-api drives it."""

    def __init__(self, ingress: Ingress, llm: FakeChatProvider) -> None:
        self.ingress, self.bus, self.llm = ingress, ingress.bus, llm
        self.key = base64.b64decode(KEY)

    async def agent(self, *, first_message: str | None = "Hi, this is the bakery.", tenant_id: str = TENANT,
                    active: bool = True) -> AgentConfig:
        agent = AgentConfig(id="chat" + subjects.new_id()[:10], tenant_id=tenant_id, version=1,
                            first_message=first_message, is_active=active)
        raw = agent.model_dump_json().encode()
        await self.bus.kv["agents"].put(subjects.agent_version_key(agent.id, 1), raw)
        await self.bus.kv["agents"].put(subjects.agent_key(agent.id), raw)
        return agent

    def token(self, agent: AgentConfig, *, channel: str = rpc.CHANNEL, tenant_id: str | None = None,
              key: bytes | None = None, ttl_s: float = 30.0) -> str:
        token, _ = calltoken.mint(key or self.key, tenant_id=tenant_id or agent.tenant_id, agent_id=agent.id,
                                  channel=channel, ttl_s=ttl_s, subject="user:u1")
        return token

    async def ask(self, subject: str, body: BaseModel | bytes, timeout: float = 10.0) -> ChatAnswer:
        raw = body if isinstance(body, bytes) else body.model_dump_json().encode()
        return ChatAnswer.model_validate_json(await self.bus.request(subject, raw, timeout=timeout))

    async def open(self, token: str, wait_s: float = 5.0) -> ChatAnswer:
        return await self.ask(subjects.ingress_rpc(rpc.CHANNEL, rpc.OPEN), rpc.ChatOpen(token=token, wait_s=wait_s))

    async def say(self, call_id: str, text: str, *, tenant_id: str = TENANT, wait_s: float = 5.0) -> ChatAnswer:
        body = rpc.ChatSay(tenant_id=tenant_id, text=text, wait_s=wait_s)
        return await self.ask(subjects.ingress_call_rpc(rpc.CHANNEL, call_id, rpc.SAY), body)

    async def end(self, call_id: str, *, tenant_id: str = TENANT) -> ChatAnswer:
        body = rpc.ChatEnd(tenant_id=tenant_id)
        return await self.ask(subjects.ingress_call_rpc(rpc.CHANNEL, call_id, rpc.END), body)

    def of(self, *types: type, call_id: str) -> list[Any]:
        return self.ingress.events(*types, call_id=call_id)

    async def ended(self, call_id: str) -> events.CallEnded:
        await self.bus.wait_for(lambda: bool(self.of(events.CallEnded, call_id=call_id)))
        ended: events.CallEnded = self.of(events.CallEnded, call_id=call_id)[0].data
        return ended


@pytest.fixture
def llm() -> FakeChatProvider:
    return FakeChatProvider()


@pytest.fixture
async def chats(llm: FakeChatProvider) -> AsyncIterator[Chats]:
    """Ingress with a call-token key and brain, on one bus."""
    async with Ingress.running(call_token_key=KEY) as ingress:
        brain = BrainService(BrainSettings(llm_base_url="http://platform-llm.test/v1", shutdown_grace_s=2.0), chat=llm)
        await brain.start(ingress.bus)
        try:
            yield Chats(ingress, llm)
        finally:
            await brain.stop()


@pytest.fixture
async def no_brain(llm: FakeChatProvider) -> AsyncIterator[Chats]:
    """Ingress alone: nobody answers a message."""
    async with Ingress.running(call_token_key=KEY) as ingress:
        yield Chats(ingress, llm)


def chat_sessions(c: Chats) -> dict[str, Any]:
    from voice_ingress.transports.chat import ChatEndpoint

    endpoint = next(e for e in c.ingress.service.endpoints if isinstance(e, ChatEndpoint))
    return endpoint.sessions


# ---------------------------------------------------------------- a whole chat
async def test_a_chat_is_a_call_of_channel_chat_with_text_turns(chats: Chats) -> None:
    agent = await chats.agent()
    opened = await chats.open(chats.token(agent))
    assert opened.error is None and opened.greeting == "Hi, this is the bakery."
    call_id = opened.call_id
    assert call_id is not None
    started = chats.of(events.CallStarted, call_id=call_id)[0]
    assert started.data.channel == events.Channel.chat and started.tenant_id == TENANT
    assert started.data.agent_id == agent.id and started.data.to_number is None
    assert chats.of(events.CallAnswered, call_id=call_id)[0].data.media_format == "text/plain"

    first = await chats.say(call_id, "When do you open?")
    assert first.error is None and first.turn == 1 and not first.ended
    assert first.reply == "Sure. We open at eight in the morning. See you then!"
    chats.llm.default = FakeReply(content="Croissants and rye. Anything else?")
    second = await chats.say(call_id, "  What do you bake?  ")
    assert (second.reply, second.turn) == ("Croissants and rye. Anything else?", 2)
    typed = [e.data.text for e in chats.of(events.TranscriptFinalized, call_id=call_id)]
    assert typed == ["When do you open?", "What do you bake?"]  # each message is the caller's turn
    done = chats.of(events.TurnCompleted, call_id=call_id)
    assert [(d.data.caller_text, d.data.agent_text) for d in done] == [
        (None, "Hi, this is the bakery."),
        ("When do you open?", first.reply),
        ("What do you bake?", second.reply),
    ]
    assert all(c.data.text_only for c in chats.of(events.ReplyChunk, call_id=call_id))

    bye = await chats.end(call_id)
    assert bye.error is None and bye.ended
    assert (await chats.ended(call_id)).reason == events.EndReason.caller_hangup
    with pytest.raises(KeyNotFoundError):  # the live record is gone
        await chats.bus.kv["calls"].get(subjects.call_key(call_id))
    with pytest.raises(NoResponders):  # nobody holds the chat any more
        await chats.say(call_id, "Hello?")
    assert not chat_sessions(chats)


async def test_an_agent_without_a_first_message_does_not_greet(chats: Chats) -> None:
    agent = await chats.agent(first_message=None)
    opened = await chats.open(chats.token(agent))
    assert opened.error is None and opened.call_id and opened.greeting is None
    assert (await chats.say(opened.call_id, "Hi")).reply


async def test_the_agent_hanging_up_ends_the_chat_with_its_reply(chats: Chats) -> None:
    chats.llm.default = FakeReply(content="Thanks for chatting, goodbye!", tool_calls=(ToolCall("end_call"),))
    agent = await chats.agent()
    call_id = (await chats.open(chats.token(agent))).call_id
    assert call_id
    answer = await chats.say(call_id, "That's all, bye")
    assert answer.reply == "Thanks for chatting, goodbye!" and answer.ended
    assert (await chats.ended(call_id)).reason == events.EndReason.agent_hangup


# ---------------------------------------------------------------- grants
async def test_a_token_opens_one_chat(chats: Chats) -> None:
    agent = await chats.agent()
    token = chats.token(agent)
    assert (await chats.open(token)).call_id
    again = await chats.open(token)
    assert again.error == ChatError.refused and again.detail == "call token already used"


@pytest.mark.parametrize("case", ["webrtc token", "expired", "forged", "garbage"])
async def test_a_bad_token_opens_nothing(chats: Chats, case: str) -> None:
    agent = await chats.agent()
    token = {
        "webrtc token": lambda: chats.token(agent, channel="webrtc"),
        "expired": lambda: chats.token(agent, ttl_s=-1),
        "forged": lambda: chats.token(agent, key=os.urandom(32)),
        "garbage": lambda: "not.a-token",
    }[case]()
    answer = await chats.open(token)
    assert answer.error == ChatError.refused and answer.call_id is None
    assert not chats.bus.events(events.CallStarted)


async def test_a_grant_for_another_tenants_agent_or_an_inactive_one_opens_nothing(chats: Chats) -> None:
    agent = await chats.agent()
    answer = await chats.open(chats.token(agent, tenant_id="tenant-b"))  # signed, but the agent is not tenant-b's
    assert answer.error == ChatError.not_found
    inactive = await chats.agent(active=False)
    assert (await chats.open(chats.token(inactive))).error == ChatError.not_found
    assert not chats.bus.events(events.CallStarted)


async def test_without_a_key_chats_are_refused(llm: FakeChatProvider) -> None:
    async with Ingress.running() as ingress:
        c = Chats(ingress, llm)
        answer = await c.open(c.token(await c.agent()))
        assert answer.error == ChatError.unavailable and "CALL_TOKEN_KEY" in (answer.detail or "")


# ---------------------------------------------------------------- bad requests, other tenants, limits
async def test_another_tenant_cannot_use_a_chat(chats: Chats) -> None:
    call_id = (await chats.open(chats.token(await chats.agent()))).call_id
    assert call_id
    assert (await chats.say(call_id, "Hi", tenant_id="tenant-b")).error == ChatError.not_found
    assert (await chats.end(call_id, tenant_id="tenant-b")).error == ChatError.not_found
    assert not chats.of(events.TranscriptFinalized, call_id=call_id)
    assert (await chats.say(call_id, "Hi")).error is None  # still the owner's


async def test_malformed_requests_are_answered_invalid(chats: Chats) -> None:
    call_id = (await chats.open(chats.token(await chats.agent()))).call_id
    assert call_id
    say = subjects.ingress_call_rpc(rpc.CHANNEL, call_id, rpc.SAY)
    too_long = b'{"tenant_id": "tenant-a", "text": "' + b"x" * (rpc.MAX_MESSAGE_CHARS + 1) + b'"}'
    for raw in (b"{not json", b'{"tenant_id": "tenant-a"}', too_long, b'{"tenant_id": "tenant-a", "text": "   "}',
                b"x" * 20_000):
        answer = await chats.ask(say, raw)
        assert answer.error == ChatError.invalid, raw[:40]
    assert (await chats.ask(subjects.ingress_rpc(rpc.CHANNEL, rpc.OPEN), b"[]")).error == ChatError.invalid
    assert not chats.of(events.TranscriptFinalized, call_id=call_id)


async def test_one_message_at_a_time_and_a_late_reply_times_out(no_brain: Chats) -> None:
    c = no_brain
    call_id = (await c.open(c.token(await c.agent(first_message=None)))).call_id
    assert call_id
    first = asyncio.create_task(c.say(call_id, "Anyone there?", wait_s=1.0))
    await c.bus.wait_for(lambda: bool(c.of(events.TranscriptFinalized, call_id=call_id)))
    busy = await c.say(call_id, "Hello?")
    assert busy.error == ChatError.busy
    late = await first
    assert late.error == ChatError.timeout
    # the chat goes on: the next message is taken
    second = asyncio.create_task(c.say(call_id, "Still there?", wait_s=0.2))
    assert (await second).error == ChatError.timeout
    assert len(c.of(events.TranscriptFinalized, call_id=call_id)) == 2
    assert not c.of(events.CallEnded, call_id=call_id)


async def test_a_greeting_that_never_comes_ends_the_chat(no_brain: Chats) -> None:
    c = no_brain
    answer = await c.open(c.token(await c.agent()), wait_s=0.2)
    assert answer.error == ChatError.timeout
    started = c.bus.events(events.CallStarted)[0]
    assert (await c.ended(started.call_id)).reason == events.EndReason.timeout
    assert not chat_sessions(c)


async def test_an_idle_chat_ends_by_itself(llm: FakeChatProvider) -> None:
    async with Ingress.running(call_token_key=KEY, chat_idle_timeout_s=0.3) as ingress:
        c = Chats(ingress, llm)
        call_id = (await c.open(c.token(await c.agent(first_message=None)))).call_id
        assert call_id
        ended = await c.ended(call_id)
        assert ended.reason == events.EndReason.timeout and ended.detail == "idle"
        assert not chat_sessions(c)


async def test_a_replica_holds_at_most_chat_max_sessions(llm: FakeChatProvider) -> None:
    async with Ingress.running(call_token_key=KEY, chat_max_sessions=1) as ingress:
        c = Chats(ingress, llm)
        agent = await c.agent(first_message=None)
        assert (await c.open(c.token(agent))).call_id
        full = await c.open(c.token(agent))
        assert full.error == ChatError.unavailable
        assert len(c.bus.events(events.CallStarted)) == 1


async def test_shutdown_ends_live_chats(llm: FakeChatProvider) -> None:
    ingress = Ingress(call_token_key=KEY)
    await ingress.start()
    c = Chats(ingress, llm)
    call_id = (await c.open(c.token(await c.agent(first_message=None)))).call_id
    assert call_id
    await ingress.stop()
    assert (await c.ended(call_id)).reason == events.EndReason.shutdown


async def test_a_call_ended_elsewhere_ends_the_chat_here(chats: Chats) -> None:
    call_id = (await chats.open(chats.token(await chats.agent(first_message=None)))).call_id
    assert call_id
    from voice_schemas import make

    await chats.bus.publish(make(events.CallEnded(reason=events.EndReason.error), tenant_id=TENANT, call_id=call_id,
                                 event_id=f"{call_id}-ended"))
    await chats.bus.wait_for(lambda: not chat_sessions(chats))
    assert len(chats.of(events.CallEnded, call_id=call_id)) == 1  # not announced twice
