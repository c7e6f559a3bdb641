"""Intents with cached answers (``voice_brain.intents``): the real all-MiniLM-L6-v2 int8 model classifies
paraphrases, the lexical fallback takes over without it, and in brain a confident match to a cached answer is the
reply without any request to the OpenAI-protocol server, while other matches reach the LLM as a hint."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from voice_brain import intents as intents_module
from voice_brain.intents import HINT, IntentClassifier, content_words, decide, overlap, tokenizer_file
from voice_brain.service import BrainService
from voice_runtime.memory import InMemoryBus
from voice_schemas import AgentConfig, events
from voice_schemas.agent import EndCallTool, HttpTool, Intent

from .calls import Call, brains, make_agent
from .fake_openai import FakeOpenAI, Script
from .tool_server import ToolServer

pytestmark = pytest.mark.integration

HOURS_ANSWER = "We are open from noon to ten at night, Tuesday to Sunday."
INTENTS = [
    Intent(name="hours", examples=["What are your opening hours?", "When are you open?", "What time do you close?"],
           answer=HOURS_ANSWER),
    Intent(name="address", examples=["Where are you located?", "What is your address?",
                                     "How do I get to the restaurant?"],
           answer="We are at 12 Harbour Street, next to the old lighthouse."),
    Intent(name="booking", examples=["I want to book a table", "Can I make a reservation?",
                                     "Do you have a table for tonight?"]),
]


def agent_with(intents: list[Intent] = INTENTS, **kw: Any) -> AgentConfig:
    return AgentConfig(id="a-intents", tenant_id="t", intents=intents, **kw)


@pytest.fixture(scope="module")
async def classifier(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[IntentClassifier]:
    c = IntentClassifier("minilm", models_dir=tmp_path_factory.mktemp("models"))
    await c.start()
    await c.ready()
    yield c
    await c.aclose()


# ------------------------------------------------------------------ the classifier, real model
@pytest.mark.parametrize(("text", "intent"), [
    ("what time do you open", "hours"),
    ("are you open on sundays", "hours"),
    ("until when can I come in tonight", "hours"),
    ("whats the street address", "address"),
    ("where can I find you", "address"),
    ("I'd like to reserve a table for four people", "booking"),
])
async def test_paraphrases_find_their_intent(classifier: IntentClassifier, text: str, intent: str) -> None:
    assert classifier.method == "embedding"
    match = await classifier.classify(agent_with(), text)
    assert match is not None and match.method == "embedding"
    assert match.name == intent, (text, match)


async def test_the_common_ones_pass_the_default_threshold(classifier: IntentClassifier) -> None:
    agent = agent_with()
    for text, intent in [("what time do you open", "hours"), ("what's your address", "address")]:
        decision = decide(agent, await classifier.classify(agent, text))
        assert decision is not None and decision.intent.name == intent and decision.intent.cached


@pytest.mark.parametrize("text", ["my car broke down on the highway", "can I pay with a credit card",
                                  "do you sell gift cards", "the weather is lovely today"])
async def test_unrelated_words_stay_below_the_threshold(classifier: IntentClassifier, text: str) -> None:
    agent = agent_with()
    match = await classifier.classify(agent, text)
    assert match is not None and match.confidence < agent.intent_threshold, (text, match)
    assert decide(agent, match) is None


async def test_a_higher_threshold_is_the_agents_own(classifier: IntentClassifier) -> None:
    match = await classifier.classify(agent_with(), "where can I find you")
    assert match is not None and match.name == "address"
    assert decide(agent_with(intent_threshold=0.45), match) is not None
    assert decide(agent_with(intent_threshold=0.99), match) is None


async def test_example_vectors_are_computed_once_per_agent_version_and_bounded(tmp_path: Path) -> None:
    c = IntentClassifier("minilm", models_dir=tmp_path, cache_agents=2)
    await c.start()
    try:
        agents = [AgentConfig(id=f"a{i}", tenant_id="t", intents=INTENTS) for i in range(3)]
        for a in agents:
            await c.classify(a, "when are you open")
        assert len(c._cache) == 2 and ("a0", 1) not in {k[:2] for k in c._cache}
        before = dict(c._cache)
        await c.classify(agents[2], "when do you close")
        assert c._cache == before, "the same version: its vectors reused"
    finally:
        await c.aclose()


def test_the_tokenizer_is_extracted_once_under_the_state_dir(tmp_path: Path) -> None:
    path = tokenizer_file(tmp_path)
    assert path.is_file() and path.parent.parent == tmp_path
    stamp = path.stat().st_mtime_ns
    assert tokenizer_file(tmp_path) == path and path.stat().st_mtime_ns == stamp


# ------------------------------------------------------------------ the lexical fallback
def test_word_overlap_ignores_filler_and_endings() -> None:
    assert content_words("What are your opening hours?") == {"open", "hour"}
    assert overlap(content_words("when are you open"), content_words("what time do you open")) > 0.6
    assert overlap(content_words("hello"), content_words("")) == 0.0


async def test_without_the_model_the_lexical_fallback_classifies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(intents_module, "MODEL_PACKAGE", "no_such_package_for_intents")
    c = IntentClassifier("minilm", models_dir=tmp_path)
    await c.start()
    try:
        match = await c.classify(agent_with(), "when do you open on sunday")
        assert c.method == "lexical"
        assert match is not None and (match.name, match.method) == ("hours", "lexical")
        assert (await c.classify(agent_with(), "do you have a table tonight")).name == "booking"  # type: ignore[union-attr]
    finally:
        await c.aclose()


# ------------------------------------------------------------------ in brain
Brain = Callable[..., Any]


@pytest.fixture
async def bus() -> InMemoryBus:
    return InMemoryBus("test")


@pytest.fixture
async def brain(bus: InMemoryBus, openai_double: FakeOpenAI, tool_server: ToolServer) -> AsyncIterator[Brain]:
    openai_double.reset()
    tool_server.requests.clear()
    async with brains(bus, openai_double.base_url, egress_allow=f"127.0.0.1:{tool_server.port}") as start_brain:
        async def start(**settings: Any) -> BrainService:
            svc: BrainService = await start_brain(**settings)
            await svc.intents.ready()
            return svc

        yield start


def spoken(call: Call, turn_id: str) -> str:
    return " ".join(e.data.text for e in sorted(call.of(events.ReplyChunk, turn_id), key=lambda e: e.data.index)
                    if e.data.text)


async def completed(call: Call, turn_id: str) -> events.TurnCompleted:
    chunks = await call.wait(events.ReplyChunk, turn_id, final=True)
    await call.pub(events.PlayoutFinished(heard_chunks=[c.data.index for c in chunks], cleared=False),
                   turn_id=turn_id)
    (done,) = await call.wait(events.TurnCompleted, turn_id)
    return done.data


async def test_a_frequent_question_is_answered_from_the_cache_without_the_llm(
        bus: InMemoryBus, brain: Brain, openai_double: FakeOpenAI) -> None:
    await brain()
    agent = await make_agent(bus, intents=INTENTS)
    async with Call(bus, agent) as call:
        await call.wait(events.ReplyChunk, "greeting")
        await call.pub(events.TranscriptFinalized(utterance_id="u1", text="what time do you open"), turn_id="t1")
        done = await completed(call, "t1")
        assert spoken(call, "t1") == HOURS_ANSWER
        assert openai_double.requests == [], "answered from the cache: no request reached the LLM"
        assert done.intent is not None and done.intent.cached and done.intent.name == "hours"
        assert done.intent.method == "embedding" and done.intent.confidence >= agent.intent_threshold
        assert done.usage.llm_input_tokens == 0 and done.agent_text == HOURS_ANSWER

        # an unrelated question goes to the LLM, with no hint and no intent
        await call.pub(events.TranscriptFinalized(utterance_id="u2", text="Do you sell gift cards?"), turn_id="t2")
        done = await completed(call, "t2")
        (request,) = openai_double.requests
        assert done.intent is None and "Detected intent" not in str(request["messages"])
        assert spoken(call, "t2") == Script().text
        # the cached answer is in the conversation the LLM reads
        assert {"role": "assistant", "content": HOURS_ANSWER} in request["messages"]


async def test_an_intent_without_an_answer_reaches_the_llm_as_a_hint(
        bus: InMemoryBus, brain: Brain, openai_double: FakeOpenAI) -> None:
    await brain()
    agent = await make_agent(bus, intents=INTENTS, system_prompt="You are the restaurant's host.")
    async with Call(bus, agent) as call:
        await call.wait(events.ReplyChunk, "greeting")
        await call.pub(events.TranscriptFinalized(utterance_id="u1", text="can I reserve a table for two tonight"),
                       turn_id="t1")
        done = await completed(call, "t1")
        (request,) = openai_double.requests
        messages = request["messages"]
        assert messages[0]["role"] == "system", "the fixed prefix first"
        assert messages[0]["content"].startswith("You are the restaurant's host.")
        assert "Detected intent" not in messages[0]["content"]
        hints = [i for i, m in enumerate(messages) if m["role"] == "system" and m["content"].startswith(
            HINT.split("{")[0] + "booking (confidence ")]
        assert len(hints) == 1 and hints[0] > 0, "one hint, after the fixed system prompt"
        assert done.intent is not None and done.intent.name == "booking" and not done.intent.cached


async def test_a_tool_intent_runs_its_tool_and_an_end_call_intent_hangs_up(
        bus: InMemoryBus, brain: Brain, openai_double: FakeOpenAI, tool_server: ToolServer) -> None:
    await brain()
    booking = HttpTool(name="list_bookings", description="Today's free tables", method="POST",
                       url=tool_server.base_url + "/bookings")
    agent = await make_agent(bus, tools=[booking, EndCallTool()], intents=[
        Intent(name="tables", examples=["Which tables are free today?", "Any free tables today?"],
               tool="list_bookings", answer="Let me look at today's tables."),
        Intent(name="bye", examples=["That's all, goodbye", "Bye, thanks"], tool="end_call",
               answer="Thanks for calling, goodbye!"),
    ])
    openai_double.script = Script(text="We have two tables free at eight.")
    async with Call(bus, agent) as call:
        await call.wait(events.ReplyChunk, "greeting")
        await call.pub(events.TranscriptFinalized(utterance_id="u1", text="are any tables free today"),
                       turn_id="t1")
        done = await completed(call, "t1")
        assert spoken(call, "t1") == "Let me look at today's tables. We have two tables free at eight."
        (req,) = tool_server.requests
        assert (req["method"], req["path"]) == ("POST", "/bookings")
        (called,) = call.of(events.ToolCallRequested, "t1")
        assert called.data.name == "list_bookings" and called.data.arguments == {}
        (request,) = openai_double.requests  # only the wording of the result
        assert [m for m in request["messages"] if m["role"] == "tool"]
        assert done.intent is not None and done.intent.name == "tables" and not done.intent.cached

        await call.pub(events.TranscriptFinalized(utterance_id="u2", text="bye, thanks a lot"), turn_id="t2")
        done = await completed(call, "t2")
        assert spoken(call, "t2") == "Thanks for calling, goodbye!"
        assert call.of(events.HangUp, "t2") and len(openai_double.requests) == 1
        assert done.intent is not None and done.intent.cached
