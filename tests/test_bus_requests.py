"""Core request/reply and queue groups (what control-api uses to reach ingress): the same test bodies on the
in-memory bus and on a real NATS server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from voice_runtime.bus import Bus, NoResponders
from voice_runtime.handlers import Message
from voice_runtime.memory import InMemoryBus
from voice_schemas import subjects

pytestmark = pytest.mark.integration


@pytest.fixture(params=["memory", "nats"])
async def anybus(request: pytest.FixtureRequest, nats_url: str) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield InMemoryBus("test")
        return
    b = await Bus.connect(nats_url, "test")
    yield b
    await b.close()


async def test_a_request_gets_the_answer_of_one_queue_group_member(anybus: Any) -> None:
    subject = subjects.ingress_rpc("chat", "t" + subjects.new_id()[:8])
    served: list[str] = []

    def member(name: str) -> Any:
        async def answer(msg: Message) -> None:
            served.append(name)
            await anybus.publish_nowait(msg.reply, name.encode() + b":" + msg.data)

        return answer

    subs = [await anybus.subscribe(subject, member(n), queue="group") for n in ("a", "b")]
    try:
        for i in range(6):
            got = await anybus.request(subject, str(i).encode(), timeout=5)
            assert got.split(b":")[1] == str(i).encode() and got.split(b":")[0] in (b"a", b"b")
        assert len(served) == 6  # each request reached one member, never both
    finally:
        for s in subs:
            await s.unsubscribe()


async def test_a_request_nobody_serves_fails_at_once(anybus: Any) -> None:
    with pytest.raises(NoResponders):
        await anybus.request(subjects.ingress_call_rpc("chat", subjects.new_call_id(), "say"), b"{}", timeout=5)


async def test_a_request_nobody_answers_times_out(anybus: Any) -> None:
    subject = subjects.ingress_rpc("chat", "t" + subjects.new_id()[:8])

    async def silent(msg: Message) -> None:
        pass

    sub = await anybus.subscribe(subject, silent)
    try:
        with pytest.raises(TimeoutError):
            await anybus.request(subject, b"{}", timeout=0.2)
    finally:
        await sub.unsubscribe()


async def test_a_plain_message_has_no_reply_inbox(anybus: Any) -> None:
    subject = subjects.ingress_rpc("chat", "t" + subjects.new_id()[:8])
    got: asyncio.Queue[Message] = asyncio.Queue()

    async def keep(msg: Message) -> None:
        await got.put(msg)

    sub = await anybus.subscribe(subject, keep)
    try:
        await anybus.publish_nowait(subject, b"x")
        msg = await asyncio.wait_for(got.get(), 5)
        assert msg.data == b"x" and not msg.reply
    finally:
        await sub.unsubscribe()


@pytest.mark.unit
def test_rpc_subjects_are_built_from_checked_tokens() -> None:
    call_id = subjects.new_call_id()
    assert subjects.ingress_rpc("chat", "open") == "ingress.rpc.chat.open"
    assert subjects.ingress_call_rpc("chat", call_id, "say") == f"ingress.rpc.chat.{call_id}.say"
    assert subjects.grant_key("ab12") == "g.ab12"
    for bad in ("a.b", "*", ">", "a b", ""):
        with pytest.raises(subjects.InvalidSubjectToken):
            subjects.ingress_call_rpc("chat", bad, "say")
        with pytest.raises(subjects.InvalidSubjectToken):
            subjects.grant_key(bad)
    with pytest.raises(subjects.InvalidSubjectToken):
        subjects.ingress_rpc("chat", "open.>")
