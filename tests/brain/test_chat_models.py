"""Chat-model providers: found by name (built-in or entry point), one client per endpoint, shared limits."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest
from voice_brain.chat import (
    ChatLimits,
    ChatModel,
    ChatModelError,
    ChatRequest,
    Delta,
    Endpoint,
    ToolCall,
    UnknownProvider,
    Usage,
    load_provider,
    registry,
)
from voice_brain.chat.openai_compatible import OpenAIChatModel, OpenAIProvider
from voice_brain.conversation import END_CALL_TOOL

from .fake_openai import FakeOpenAI, Script
from .fakes import FakeChatProvider, FakeReply

LIMITS = ChatLimits(first_token_timeout_s=1.0, total_timeout_s=2.0)


@pytest.mark.unit
def test_openai_is_the_built_in_provider() -> None:
    p = load_provider("openai", LIMITS)
    assert isinstance(p, OpenAIProvider) and p.limits == LIMITS


@pytest.mark.unit
def test_an_unknown_provider_names_the_known_ones() -> None:
    with pytest.raises(UnknownProvider, match="openai"):
        load_provider("no-such-llm", LIMITS)


@pytest.mark.unit
def test_a_provider_from_another_package_is_found_by_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = EntryPoint(name="fake", value="tests.brain.fakes:fake_provider", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep] if group == registry.ENTRY_POINT_GROUP else [])
    assert "fake" in registry.available()
    p = load_provider("fake", LIMITS)
    assert isinstance(p, FakeChatProvider) and p.limits == LIMITS


@pytest.mark.unit
async def test_one_client_per_endpoint_bounded_by_engine_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_OPENAI_MAX_CLIENTS", "2")
    p = OpenAIProvider(LIMITS)
    platform = Endpoint("http://platform.test/v1", "sk-platform")
    a = p.model(platform, "small")
    b = p.model(platform, "large")
    assert isinstance(a, OpenAIChatModel) and isinstance(b, OpenAIChatModel)
    assert a._c is b._c and (a.model, b.model) == ("small", "large")  # the model is per call, the client is not
    assert p.model(Endpoint("http://agent.test/v1", "sk-platform"), "m")._c is not a._c  # type: ignore[attr-defined]
    p.model(Endpoint("http://third.test/v1", "sk-platform"), "m")
    assert len(p._clients) == 2 and platform not in p._clients  # the least recently used endpoint dropped
    await p.aclose()
    assert not p._clients


@pytest.mark.unit
def test_an_endpoint_key_never_shows_in_its_repr() -> None:
    assert "sk-secret" not in repr(Endpoint("http://platform.test/v1", "sk-secret"))


@pytest.mark.unit
async def test_any_adapter_failure_surfaces_as_a_chat_model_error() -> None:
    provider = FakeChatProvider(default=FakeReply(content="Hello there.", fail_after_chars=0))
    model = provider.model(Endpoint("http://llm.test/v1"), "m")
    with pytest.raises(ChatModelError) as failed:
        async for _ in model.stream(ChatRequest(messages=[{"role": "user", "content": "hi"}])):
            pass
    assert isinstance(failed.value.__cause__, RuntimeError)


# ---------------------------------------------------------------- the openai adapter over real HTTP
async def collect(model: ChatModel, request: ChatRequest) -> list[Delta]:
    return [d async for d in model.stream(request)]


@pytest.mark.integration
async def test_openai_adapter_streams_text_and_a_tool_call(openai_double: FakeOpenAI) -> None:
    openai_double.reset(Script(text="Thanks for calling, goodbye!", tool="end_call", tool_args={"reason": "done"}))
    p = OpenAIProvider(LIMITS)
    request = ChatRequest(messages=[{"role": "user", "content": "bye"}], tools=(END_CALL_TOOL,))
    deltas = await collect(p.model(Endpoint(openai_double.base_url, "sk-test"), "smollm2"), request)
    assert "".join(d.text for d in deltas).strip() == "Thanks for calling, goodbye!"
    calls = [c for d in deltas for c in d.tool_calls]
    assert calls == [ToolCall("end_call", {"reason": "done"}, id="call_1")]
    # usage asked for and reported (the double counts words: 1 prompt word, 4 reply words)
    assert openai_double.requests[-1]["stream_options"] == {"include_usage": True}
    assert deltas[-1].usage == Usage(input_tokens=1, output_tokens=4)
    assert openai_double.requests[-1]["model"] == "smollm2"
    await p.aclose()


@pytest.mark.integration
async def test_openai_adapter_calls_an_endpoint_that_rejects_tools_without_them(openai_double: FakeOpenAI) -> None:
    openai_double.reset(Script(text="Hello there.", reject_tools=True))
    p = OpenAIProvider(LIMITS)
    model = p.model(Endpoint(openai_double.base_url, "sk-test"), "smollm2")
    request = ChatRequest(messages=[{"role": "user", "content": "hi"}], tools=(END_CALL_TOOL,))
    assert "".join(d.text for d in await collect(model, request)).strip() == "Hello there."
    await collect(model, request)  # remembered: no second refusal
    assert ["tools" in r for r in openai_double.requests] == [True, False, False]
    await p.aclose()


@pytest.mark.integration
async def test_openai_adapter_http_error_is_a_chat_model_error(openai_double: FakeOpenAI) -> None:
    openai_double.reset(Script(status=500))
    p = OpenAIProvider(LIMITS)
    with pytest.raises(ChatModelError):
        await collect(p.model(Endpoint(openai_double.base_url, "sk-test"), "m"), ChatRequest(messages=[]))
    await p.aclose()


@pytest.mark.integration
async def test_a_warm_up_asks_for_one_token_of_the_same_prompt_and_counts_no_completion(
        openai_double: FakeOpenAI) -> None:
    from voice_runtime import metrics

    openai_double.reset(Script(text="Hello there, how can I help?"))
    p = OpenAIProvider(LIMITS)
    model = p.model(Endpoint(openai_double.base_url, "sk-test"), "smollm2")
    messages = [{"role": "system", "content": "Be a baker."}, {"role": "assistant", "content": "Hi!"}]
    tokens = metrics.LLM_TOKENS.labels("brain")._value.get()
    await model.warm(ChatRequest(messages=messages, temperature=0.7, max_tokens=160, tools=(END_CALL_TOOL,)))
    (body,) = openai_double.warmups
    assert (body["max_tokens"], body["temperature"], body["messages"]) == (1, 0.0, messages)
    assert [t["function"]["name"] for t in body["tools"]] == ["end_call"] and openai_double.requests == []
    assert metrics.LLM_TOKENS.labels("brain")._value.get() == tokens  # not a completion
    openai_double.reset(Script(status=500))
    with pytest.raises(ChatModelError):
        await model.warm(ChatRequest(messages=messages))
    await p.aclose()
