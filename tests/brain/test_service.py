"""BrainService wired to a bus, with a fake chat model: the same test bodies on the in-memory bus and on a
real NATS server of the test's own (``any_bus``); a few more on the in-memory bus only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from voice_brain.chat import ToolCall
from voice_brain.prompting import system_prompt
from voice_brain.service import BrainService
from voice_brain.settings import BrainSettings
from voice_runtime.bus import Bus, Transient
from voice_runtime.handlers import Handlers
from voice_runtime.memory import InMemoryBus
from voice_runtime.ports import BusPort
from voice_schemas import Envelope, events, make, subjects
from voice_schemas.agent import LlmSettings
from voice_schemas.streams import BRAIN_APPROVALS, BRAIN_TURNS, KV_HISTORY

from ..waiting import until
from .calls import Call, make_agent
from .fakes import FakeChatProvider, FakeReply

PLATFORM_LLM = "http://platform-llm.test/v1"


@pytest.fixture
async def memory_bus() -> InMemoryBus:
    return InMemoryBus("test")


@pytest.fixture
def llm() -> FakeChatProvider:
    return FakeChatProvider()


async def start_brain(bus: BusPort, llm: FakeChatProvider, **settings: Any) -> BrainService:
    nats_url = ",".join(u.geturl() for u in bus.nc.servers) if isinstance(bus, Bus) else "nats://unused:4222"
    svc = BrainService(BrainSettings(nats_url=nats_url, llm_base_url=PLATFORM_LLM, shutdown_grace_s=2.0, **settings),
                       chat=llm)
    # the in-memory bus is shared with the test; on NATS the service opens its own connection, as in production
    await svc.start(bus if isinstance(bus, InMemoryBus) else None)
    return svc


@pytest.fixture
async def brain(any_bus: BusPort, llm: FakeChatProvider) -> AsyncIterator[BrainService]:
    svc = await start_brain(any_bus, llm)
    yield svc
    await svc.stop()


@pytest.fixture
async def memory_brain(memory_bus: InMemoryBus, llm: FakeChatProvider) -> AsyncIterator[BrainService]:
    svc = await start_brain(memory_bus, llm)
    yield svc
    await svc.stop()


# ---------------------------------------------------------------- on both buses
async def test_greeting_then_a_turn_in_sentences(any_bus: BusPort, brain: BrainService,
                                                 llm: FakeChatProvider) -> None:
    agent = await make_agent(any_bus, system_prompt="Be a baker.")
    async with Call(any_bus, agent) as call:
        greeting = await call.wait(events.ReplyChunk, "greeting")
        assert greeting[0].data.text == "Hi, this is the bakery." and greeting[0].data.final
        await call.pub(events.TranscriptFinalized(utterance_id="u1", text="When do you open?",
                                                  speech_end_wall_ms=1.0), turn_id="t1")
        chunks = [e.data for e in await call.wait(events.ReplyChunk, "t1", final=True)]
        assert [c.text for c in chunks] == ["Sure. We open at eight in the morning.", "See you then!"]
        assert [c.index for c in chunks] == [0, 1] and chunks[-1].final and not chunks[0].final
        endpoint, model, request = llm.requests[-1]
        assert endpoint.base_url == PLATFORM_LLM and model == "smollm2"
        # the operator's endpoint: the platform key, no egress guard
        assert endpoint.api_key == brain.settings.llm_api_key.get_secret_value() and endpoint.egress is None
        assert request.messages[0] == {"role": "system", "content": system_prompt(agent)}
        assert request.messages[1] == {"role": "assistant", "content": "Hi, this is the bakery."}
        assert request.messages[-1] == {"role": "user", "content": "When do you open?"}
        await call.pub(events.PlayoutStarted(first_audio_wall_ms=2.0), turn_id="t1")
        await call.pub(events.PlayoutMarked(chunk=0), turn_id="t1")
        await call.pub(events.PlayoutFinished(heard_chunks=[0, 1]), turn_id="t1")
        done = (await call.wait(events.TurnCompleted, "t1"))[0].data
        assert done.agent_text == "Sure. We open at eight in the morning. See you then!" and not done.interrupted
        assert done.caller_text == "When do you open?" and done.latency.llm_first_sentence_ms is not None


async def test_barge_in_cancels_the_reply_and_keeps_what_was_heard(any_bus: BusPort, brain: BrainService,
                                                                  llm: FakeChatProvider) -> None:
    llm.default = FakeReply(content="One fine sentence here. Two fine sentences here. Three fine sentences here.",
                            token_delay_s=0.05)
    agent = await make_agent(any_bus)
    async with Call(any_bus, agent) as call:
        await call.wait(events.ReplyChunk, "greeting")
        await call.pub(events.TranscriptFinalized(utterance_id="u1", text="Tell me a story"), turn_id="t1")
        await call.wait(events.ReplyChunk, "t1")
        await call.pub(events.PlayoutStarted(first_audio_wall_ms=0), turn_id="t1")
        await call.pub(events.BargeIn(at_ms=100, speech_ms=400), epoch=1)
        await call.pub(events.PlayoutFinished(cleared=True, heard_chunks=[0]), turn_id="t1")
        done = (await call.wait(events.TurnCompleted, "t1"))[0].data
        assert done.interrupted and done.agent_text == "One fine sentence here."
        await asyncio.sleep(0.5)  # a cancelled stream publishes nothing more
        assert not any(c.data.final for c in call.of(events.ReplyChunk, "t1"))
        assert brain.history is not None
        h = await brain.history.get(call.call_id)
        assert h is not None and h.messages[-1] == {"role": "assistant", "content": "One fine sentence here.",
                                                    "turn_id": "t1"}


async def test_the_first_turns_prompt_is_warmed_while_the_greeting_plays(any_bus: BusPort, brain: BrainService,
                                                                       llm: FakeChatProvider) -> None:
    agent = await make_agent(any_bus, system_prompt="Be a baker.")
    async with Call(any_bus, agent) as call:
        await call.wait(events.ReplyChunk, "greeting")

        async def warmed() -> bool:
            return bool(llm.warmups)

        await until(warmed, "the prompt warm-up", timeout=10)
        await call.pub(events.TranscriptFinalized(utterance_id="u1", text="When do you open?"), turn_id="t1")
        await call.wait(events.ReplyChunk, "t1", final=True)
    (endpoint, model, warm), = llm.warmups
    _, _, first = llm.requests[-1]
    # the call's own server of the platform's model, one token, the very start of the first turn's prompt
    assert (endpoint.base_url, model) == (PLATFORM_LLM, "smollm2") and (warm.max_tokens, warm.temperature) == (1, 0.0)
    assert list(warm.messages) == [{"role": "system", "content": system_prompt(agent)},
                                   {"role": "assistant", "content": "Hi, this is the bakery."}]
    assert list(first.messages[: len(warm.messages)]) == list(warm.messages) and first.messages[-1]["role"] == "user"
    assert list(first.tools) == list(warm.tools) and first.tools  # end_call at least: tools are part of the prompt


# ---------------------------------------------------------------- in memory only


@pytest.mark.unit
async def test_a_redelivered_transcript_does_not_start_a_second_reply(memory_bus: InMemoryBus,
                                                                     memory_brain: BrainService,
                                                                     llm: FakeChatProvider) -> None:
    agent = await make_agent(memory_bus)
    async with Call(memory_bus, agent) as call:
        await call.wait(events.ReplyChunk, "greeting")
        env = await call.pub(events.TranscriptFinalized(utterance_id="u1", text="Hello?"), turn_id="t1")
        await call.wait(events.ReplyChunk, "t1", final=True)
        await memory_bus.publish(env.model_copy(update={"id": subjects.new_id()}))  # as a redelivery arrives
        await memory_bus.settle()
        assert len(llm.requests) == 1 and len(call.of(events.ReplyChunk, "t1")) == 2


@pytest.mark.unit
async def test_end_call_hangs_up_after_the_goodbye(memory_bus: InMemoryBus, memory_brain: BrainService,
                                                   llm: FakeChatProvider) -> None:
    llm.default = FakeReply(content="Thanks for calling, goodbye!", tool_calls=(ToolCall("end_call"),))
    agent = await make_agent(memory_bus)
    async with Call(memory_bus, agent) as call:
        await call.wait(events.ReplyChunk, "greeting")
        await call.pub(events.TranscriptFinalized(utterance_id="u1", text="That's all, bye"), turn_id="t1")
        hang = (await call.wait(events.HangUp, "t1"))[0]
        assert hang.data.after_playout
        chunks = [e.data for e in call.of(events.ReplyChunk, "t1")]
        assert chunks[0].text == "Thanks for calling, goodbye!" and chunks[-1].final
        assert [t["function"]["name"] for t in llm.requests[-1][2].tools] == ["end_call"]


@pytest.mark.unit
async def test_llm_timeout_is_an_apology_not_dead_air(memory_bus: InMemoryBus, memory_brain: BrainService,
                                                     llm: FakeChatProvider) -> None:
    llm.default = FakeReply(ttft_s=5.0)  # past the fake's first-token limit (0.5 s)
    agent = await make_agent(memory_bus)
    async with Call(memory_bus, agent) as call:
        await call.wait(events.ReplyChunk, "greeting")
        await call.pub(events.TranscriptFinalized(utterance_id="u1", text="Hello?"), turn_id="t1")
        chunks = await call.wait(events.ReplyChunk, "t1", final=True)
        assert [c.data.text for c in chunks] == [memory_brain.settings.apology]


@pytest.mark.unit
async def test_an_agent_with_its_own_endpoint_is_served_there(memory_bus: InMemoryBus, memory_brain: BrainService,
                                                              llm: FakeChatProvider) -> None:
    agent = await make_agent(memory_bus, llm=LlmSettings(base_url="http://agent-llm.test/v1", model="big"))
    async with Call(memory_bus, agent) as call:
        await call.wait(events.ReplyChunk, "greeting")
        await call.pub(events.TranscriptFinalized(utterance_id="u1", text="Hello?"), turn_id="t1")
        await call.wait(events.ReplyChunk, "t1", final=True)
        endpoint, model, _ = llm.requests[-1]
        assert (endpoint.base_url, model) == ("http://agent-llm.test/v1", "big")
        # an agent's own endpoint: never the platform key (no secret named: no key), always through the guard
        assert endpoint.api_key == "" and endpoint.egress is not None


@pytest.mark.unit
async def test_no_warm_up_for_an_agents_own_endpoint_or_when_turned_off(memory_bus: InMemoryBus,
                                                                      llm: FakeChatProvider) -> None:
    own = await make_agent(memory_bus, llm=LlmSettings(base_url="http://agent-llm.test/v1", model="big"))
    platform = await make_agent(memory_bus)
    for agent, settings in ((own, {}), (platform, {"prompt_warmup": False})):
        svc = await start_brain(memory_bus, llm, **settings)
        try:
            async with Call(memory_bus, agent) as call:
                await call.wait(events.ReplyChunk, "greeting")
                await call.pub(events.TranscriptFinalized(utterance_id="u1", text="Hello?"), turn_id="t1")
                await call.wait(events.ReplyChunk, "t1", final=True)
        finally:
            await svc.stop()
    assert len(llm.requests) == 2 and llm.warmups == []  # the tenant's endpoint is sent only what turns need


@pytest.mark.unit
async def test_a_call_without_a_greeting_warms_the_system_prompt(memory_bus: InMemoryBus, memory_brain: BrainService,
                                                                 llm: FakeChatProvider) -> None:
    agent = await make_agent(memory_bus)
    async with Call(memory_bus, agent, greet=False):
        async def warmed() -> bool:
            return bool(llm.warmups)

        await until(warmed, "the prompt warm-up", timeout=10)
    assert [list(r.messages) for _, _, r in llm.warmups] == [[{"role": "system", "content": system_prompt(agent)}]]


@pytest.mark.unit
async def test_notes_reach_the_next_prompt(memory_bus: InMemoryBus, memory_brain: BrainService,
                                           llm: FakeChatProvider) -> None:
    agent = await make_agent(memory_bus)
    async with Call(memory_bus, agent) as call:
        await call.wait(events.ReplyChunk, "greeting")
        await call.pub(events.SupervisorWhispered(text="Offer the croissant deal.", from_user="sup"))
        await call.pub(events.DtmfReceived(digit="5"))
        # a decision on a call that was never held changes nothing (no note, no result)
        await call.pub(events.ToolApprovalDecided(tool_call_id="tc1", approved=False, decided_by="sup",
                                                  comment="not today"))
        await memory_bus.settle()
        await call.pub(events.TranscriptFinalized(utterance_id="u1", text="Any deals?"), turn_id="t1")
        await call.wait(events.ReplyChunk, "t1", final=True)
        notes = [m["content"] for m in llm.requests[-1][2].messages if m["role"] == "system"][1:]
        assert sorted(notes) == sorted([
            "Instruction from your supervisor (the caller cannot hear this): Offer the croissant deal.",
            "The caller pressed the key 5.",
        ])
        assert not call.of(events.ToolResultReturned)
        assert not memory_bus.dead_letters


@pytest.mark.unit
async def test_call_end_completes_a_reply_still_playing_and_drops_the_history(
        memory_bus: InMemoryBus, memory_brain: BrainService, llm: FakeChatProvider) -> None:
    agent = await make_agent(memory_bus)
    async with Call(memory_bus, agent) as call:
        await call.wait(events.ReplyChunk, "greeting")
        await call.pub(events.TranscriptFinalized(utterance_id="u1", text="When do you open?"), turn_id="t1")
        await call.wait(events.ReplyChunk, "t1", final=True)
        await call.pub(events.PlayoutMarked(chunk=0), turn_id="t1")
        await memory_bus.settle()
        await call.pub(events.CallEnded(reason="caller_hangup"))
        done = {e.turn_id: e.data for e in await call.wait(events.TurnCompleted, n=2)}
        assert done["t1"].interrupted and done["t1"].agent_text == "Sure. We open at eight in the morning."
        assert done["greeting"].agent_text == ""  # no playout report for it: nothing counts as heard
        await memory_bus.settle()
        assert memory_brain.history is not None and await memory_brain.history.get(call.call_id) is None


@pytest.mark.unit
def test_brain_handles_exactly_what_its_consumer_filters() -> None:
    turns, approvals = sorted(BrainService.consumers(), key=lambda c: c.declared.durable, reverse=True)
    assert turns.declared is BRAIN_TURNS and turns.drift() is None
    assert approvals.declared is BRAIN_APPROVALS and approvals.drift() is None


@pytest.mark.unit
async def test_a_service_missing_a_handler_refuses_to_start(memory_bus: InMemoryBus) -> None:
    class Partial(BrainService):
        turns = Handlers(BRAIN_TURNS)

        @turns.on(events.CallStarted)
        async def started(self, env: Envelope[Any]) -> None: ...

    svc = Partial(BrainSettings(), chat=FakeChatProvider())
    with pytest.raises(RuntimeError, match="filtered without a handler"):
        await svc.start(memory_bus)


@pytest.mark.unit
async def test_a_long_call_keeps_a_bounded_history(memory_bus: InMemoryBus, memory_brain: BrainService,
                                                   llm: FakeChatProvider) -> None:
    """200 turns: the stored history stays under a fixed size (every mark rewrites it whole, and a KV value is
    limited), nothing is dead-lettered, the prompt keeps the agent's prompt, a summary of the early call and the
    recent window, and a recent transcript redelivered is still recognised."""
    llm.default = FakeReply(content="Yes, we have rye bread with seeds. It costs four dollars and fifty cents today.",
                            chunk_chars=16)
    agent = await make_agent(memory_bus, system_prompt="Be a baker.")
    kv = memory_bus.kv[KV_HISTORY.bucket]
    largest = 0
    async with Call(memory_bus, agent) as call:
        await call.wait(events.ReplyChunk, "greeting")
        for i in range(200):
            turn = f"t{i}"
            last = await call.pub(events.TranscriptFinalized(
                utterance_id=f"u{i}", text=f"Question number {i}: do you have rye bread with seeds today?"),
                turn_id=turn)
            chunks = await call.wait(events.ReplyChunk, turn, final=True)
            await call.pub(events.PlayoutStarted(first_audio_wall_ms=1.0), turn_id=turn)
            for c in chunks:
                await call.pub(events.PlayoutMarked(chunk=c.data.index), turn_id=turn)
            await call.pub(events.PlayoutFinished(heard_chunks=[c.data.index for c in chunks]), turn_id=turn)
            await call.wait(events.TurnCompleted, turn)
            largest = max(largest, len((await kv.get(subjects.call_key(call.call_id))).value or b""))
        assert largest < 64 * 1024
        assert not memory_bus.dead_letters
        prompt = llm.requests[-1][2].messages
        assert prompt[0] == {"role": "system", "content": system_prompt(agent)}
        assert prompt[1]["role"] == "system" and "Question number 0:" in prompt[1]["content"]  # the summary
        assert prompt[-1] == {"role": "user", "content": "Question number 199: do you have rye bread with seeds today?"}
        assert prompt[-3]["content"].startswith("Question number 198:") and len(prompt) < 60
        # a redelivery of a recent transcript (as JetStream redelivers it) starts no second reply
        requests = len(llm.requests)
        await memory_bus.publish(last.model_copy(update={"id": subjects.new_id()}))
        await memory_bus.settle()
        assert len(llm.requests) == requests and len(call.of(events.ReplyChunk, "t199")) == 2
        assert not memory_bus.dead_letters


@pytest.mark.unit
@pytest.mark.parametrize("bad", [{"egress_allow": "10.0.0.5"}, {"secrets_key": "not base64"},
                                 {"secrets_key": "c2hvcnQ="}], ids=["allow-list-entry-without-port",
                                                                     "key-not-base64", "key-too-short"])
def test_a_malformed_egress_allow_list_or_secrets_key_stops_start_up(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"host:port|SECRETS_KEY"):
        BrainService(BrainSettings(**bad), chat=FakeChatProvider())


async def test_a_call_answered_before_its_start_was_handled_greets_at_once_not_after_a_retry(
        memory_bus: InMemoryBus, memory_brain: BrainService) -> None:
    """The caller's media can come up while brain still handles ``CallStarted``: ``CallAnswered`` then waits for
    the history (``HISTORY_WAIT_S``) instead of a nak, which would greet the caller a backoff (0.2 s+) later."""
    agent = await make_agent(memory_bus)
    call_id = subjects.new_call_id()
    started = make(events.CallStarted(agent_id=agent.id, agent_version=1, channel="test"),
                   tenant_id=agent.tenant_id, call_id=call_id)
    answered = make(events.CallAnswered(), tenant_id=agent.tenant_id, call_id=call_id)

    async def start_later() -> None:
        await asyncio.sleep(0.1)
        await memory_brain.on_call_started(started)

    later = asyncio.create_task(start_later())
    await memory_brain.on_call_answered(answered)  # raised Transient (a nak) before
    await later
    greetings = [e for e in memory_bus.events(events.ReplyChunk) if e.call_id == call_id]
    assert [(e.turn_id, e.data.text) for e in greetings] == [("greeting", "Hi, this is the bakery.")]


async def test_a_call_answered_whose_start_never_comes_is_retried_later(
        memory_bus: InMemoryBus, memory_brain: BrainService, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("voice_brain.service.HISTORY_WAIT_S", 0.05)
    answered = make(events.CallAnswered(), tenant_id="t-brain", call_id=subjects.new_call_id())
    with pytest.raises(Transient, match="history not created"):
        await memory_brain.on_call_answered(answered)
