"""Tool calls written as text (Qwen through llama.cpp's server): taken out of the spoken reply, parsed leniently."""

from __future__ import annotations

import pytest
from voice_brain.chat import ChatLimits, ChatRequest, Endpoint, ToolCall
from voice_brain.chat.openai_compatible import OpenAIProvider
from voice_brain.chat.textcalls import TextToolCalls, parse_calls
from voice_brain.conversation import END_CALL_TOOL

from .fake_openai import FakeOpenAI, Script


def stream(pieces: list[str]) -> tuple[str, list[ToolCall]]:
    t = TextToolCalls()
    spoken = "".join(t.push(p) for p in pieces)
    rest, calls = t.finish()
    return spoken + rest, calls


def by_chars(text: str) -> list[str]:
    return list(text)


@pytest.mark.unit
@pytest.mark.parametrize("block", [
    '{"name": "lookup", "arguments": {"order": "A1"}}',
    '{{"name": "lookup", "arguments": {"order": "A1"}}}',  # the template's doubled braces
    '{{"name": "lookup", "arguments": {{"order": "A1"}}}}',  # doubled all through
    '{"type": "function", "function": {"name": "lookup", "parameters": {"order": "A1"}}}',
    '{"name": "lookup", "arguments": "{\\"order\\": \\"A1\\"}"}',  # arguments as a JSON string
    '[{"name": "lookup", "arguments": {"order": "A1"}}]',
    '{{"name": "lookup", "arguments": {"order": "A1"}}}}',  # unbalanced, as Qwen2.5-Coder-1.5B wrote it
    'json\n{\n  "name": "lookup",\n  "arguments": {\n    "order": "A1"\n  }\n}\n',  # a fence's content
])
def test_lenient_call_parsing(block: str) -> None:
    assert parse_calls(block) == [ToolCall("lookup", {"order": "A1"})]


@pytest.mark.unit
def test_several_calls_in_one_block_and_malformed_arguments() -> None:
    assert parse_calls('{"name": "a", "arguments": {}}\n{"name": "b", "arguments": {"x": 1}}') == [
        ToolCall("a", {}), ToolCall("b", {"x": 1})]
    assert parse_calls('{"name": "a", "arguments": [1, 2]}') == [ToolCall("a", {}, malformed=True)]
    assert parse_calls("no json here") == []
    assert parse_calls('{"arguments": {}}') == []  # no name: no call


@pytest.mark.unit
@pytest.mark.parametrize("split", [lambda s: [s], by_chars])
@pytest.mark.parametrize("text", [
    'Let me check that. <tool_call>\n{{"name": "lookup", "arguments": {"order": "A1"}}}\n</tool_call>',
    'Let me check that. <tools>\n{"name": "lookup", "arguments": {"order": "A1"}}\n</tools>',
    'Let me check that. <tool_call>\n{"name": "lookup", "arguments": {"order": "A1"}}',  # never closed
    'Let me check that. ```json\n{"name": "lookup", "arguments": {"order": "A1"}}\n```',
])
def test_a_call_in_the_stream_is_not_spoken(text: str, split: object) -> None:
    spoken, calls = stream(split(text))  # type: ignore[operator]
    assert spoken.strip() == "Let me check that."
    assert calls == [ToolCall("lookup", {"order": "A1"})]


@pytest.mark.unit
def test_text_is_passed_on_at_once_and_only_a_possible_tag_is_held() -> None:
    t = TextToolCalls()
    assert t.push("We open at 8") == "We open at 8"
    assert t.push(" <to") == " "  # may be a tag
    assert t.push("morrow> x") == "<tomorrow> x"  # was not
    assert t.push(" a < b") == " a < b"
    assert t.finish() == ("", [])


@pytest.mark.unit
def test_a_bare_json_reply_is_a_call_and_other_json_is_spoken() -> None:
    assert stream(by_chars('  {"name": "end_call", "arguments": {"reason": "bye"}}')) == (
        "", [ToolCall("end_call", {"reason": "bye"})])
    assert stream(by_chars('{{"name": "check_order", "arguments": {"order": "4711"}}}}')) == (
        "", [ToolCall("check_order", {"order": "4711"})])
    spoken, calls = stream(['{"answer": 42}'])
    assert (spoken, calls) == ('{"answer": 42}', [])


@pytest.mark.unit
def test_text_after_a_call_is_spoken_and_a_block_without_a_call_is_dropped() -> None:
    spoken, calls = stream(by_chars('<tool_call>{"name": "a", "arguments": {}}</tool_call> Done. <tools>junk</tools>'))
    assert (spoken.strip(), calls) == ("Done.", [ToolCall("a", {})])


@pytest.mark.integration
async def test_openai_adapter_returns_a_call_written_as_text(openai_double: FakeOpenAI) -> None:
    """Over real HTTP, streamed word by word as llama.cpp streams Qwen: the call is a call, never spoken."""
    openai_double.reset(Script(text='One moment please. <tool_call>\n{{"name": "end_call", "arguments": '
                                    '{"reason": "done"}}}\n</tool_call>'))
    p = OpenAIProvider(ChatLimits(first_token_timeout_s=2.0, total_timeout_s=5.0))
    model = p.model(Endpoint(openai_double.base_url, "sk-test"), "qwen")
    deltas = [d async for d in model.stream(ChatRequest(messages=[{"role": "user", "content": "bye"}],
                                                        tools=(END_CALL_TOOL,)))]
    assert "".join(d.text for d in deltas).strip() == "One moment please."
    assert [c for d in deltas for c in d.tool_calls] == [ToolCall("end_call", {"reason": "done"})]
    await p.aclose()
