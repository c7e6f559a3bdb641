"""Tool calls a model writes as text, taken out of its spoken reply.

Servers that render a model's own chat template without parsing its output (llama.cpp's server with a GGUF
template, among others) return the model's tool calls as plain text. Qwen2.5 writes them as the template shows:

    <tool_call>
    {"name": "end_call", "arguments": {"reason": "done"}}
    </tool_call>

but often with the template's doubled braces (``{{"name": ...}}}``), sometimes inside ``<tools>`` instead of
``<tool_call>``, sometimes in a Markdown code fence, sometimes with no closing tag (the completion ended), and
often as a bare JSON object that is the whole reply, with an unbalanced closing brace
(``{{"name": "check_order", "arguments": {"order": "4711"}}}}``: seen from Qwen2.5-Coder-1.5B).
``TextToolCalls`` reads the streamed text, passes on what is meant to be spoken at once
(holding back only what may be the start of a tag) and returns the calls it parsed at the end. A block whose
content is no call (no name) is dropped: nothing of it is spoken either.
"""

from __future__ import annotations

import json
from typing import Any

from .base import ToolCall

TAGS = {"<tool_call>": "</tool_call>", "<tools>": "</tools>", "<function_call>": "</function_call>",
        "```": "```"}  # a fenced block (```json {...} ```): a call, or code that is never spoken either
_LONGEST_TAG = max(map(len, TAGS))
MAX_BLOCK_CHARS = 16_384  # one block's text kept at most (a runaway block is cut, not buffered forever)


def _objects(text: str) -> list[Any]:
    """Every JSON value in ``text`` (one per line or back to back), reading past what does not parse."""
    decoder = json.JSONDecoder()
    out: list[Any] = []
    i = 0
    while (i := text.find("{", i)) != -1:
        try:
            value, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i += 1
            continue
        out.append(value)
        i = end
    return out


def _undouble(text: str) -> str:
    """``{{"name": ..., "arguments": {...}}}`` -> ``{"name": ..., "arguments": {...}}`` (any depth of doubling
    at the ends; the inner object is left alone)."""
    s = text.strip()
    while s.startswith("{{") and s.endswith("}}"):
        s = s[1:-1].strip()
    return s


def _call(value: Any) -> ToolCall | None:
    """A parsed object as a call: ``{"name", "arguments"|"parameters"}``, or that inside ``{"function": ...}``."""
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("function"), dict):
        value = value["function"]
    name = value.get("name")
    if not isinstance(name, str) or not name.strip():
        return None
    args = value.get("arguments", value.get("parameters", {}))
    if isinstance(args, str):  # arguments given as a JSON string, as the OpenAI wire format has them
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return ToolCall(name.strip(), {}, malformed=True)
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return ToolCall(name.strip(), {}, malformed=True)
    return ToolCall(name.strip(), args)


def parse_calls(block: str) -> list[ToolCall]:
    """The calls in one block's text (doubled braces, several calls, a list of calls: all accepted)."""
    text = _undouble(block)
    for candidate in (text, text.replace("{{", "{").replace("}}", "}")):
        try:
            values = [json.loads(candidate)]
        except json.JSONDecodeError:
            values = _objects(candidate)
        calls = [c for v in values for item in (v if isinstance(v, list) else [v]) if (c := _call(item)) is not None]
        if calls:
            return calls
    return []


class TextToolCalls:
    """Feed the completion's text with ``push`` (returns what may be spoken now); ``finish`` at the end returns
    the rest to speak and every call found."""

    def __init__(self) -> None:
        self._buf = ""  # held back: a possible tag start, or the open block's content
        self._close: str | None = None  # the closing tag of the open block ("" for a bare JSON reply)
        self._started = False  # anything but whitespace was seen
        self.calls: list[ToolCall] = []

    def push(self, text: str) -> str:
        self._buf += text
        out: list[str] = []
        while self._buf:
            if self._close is not None:
                if not self._close:  # a bare JSON reply: kept to the end
                    self._buf = self._buf[:MAX_BLOCK_CHARS]
                    break
                end = self._buf.find(self._close)
                if end == -1:
                    self._buf = self._buf[:MAX_BLOCK_CHARS]
                    break
                self.calls += parse_calls(self._buf[:end])
                self._buf = self._buf[end + len(self._close):]
                self._close = None
                continue
            if not self._started:
                stripped = self._buf.lstrip()
                if not stripped:
                    break
                self._started = True
                if stripped.startswith("{"):
                    self._buf, self._close = stripped, ""
                    continue
            at, tag = min(((self._buf.find(t), t) for t in TAGS if t in self._buf), default=(-1, ""))
            if at != -1:
                out.append(self._buf[:at])
                self._buf = self._buf[at + len(tag):]
                self._close = TAGS[tag]
                continue
            keep = self._partial_tag()
            out.append(self._buf[: len(self._buf) - keep])
            self._buf = self._buf[len(self._buf) - keep:]
            break
        return "".join(out)

    def _partial_tag(self) -> int:
        """How many characters at the end of the buffer could be the start of a tag."""
        for k in range(min(len(self._buf), _LONGEST_TAG - 1), 0, -1):
            tail = self._buf[-k:]
            if any(t.startswith(tail) for t in TAGS):
                return k
        return 0

    def finish(self) -> tuple[str, list[ToolCall]]:
        """The text still to speak and the calls, once the completion has ended. An unclosed block is parsed as
        it is (the completion stopped inside it); a bare JSON reply that is no call is spoken after all."""
        rest, self._buf = self._buf, ""
        if self._close is not None:
            found = parse_calls(rest)
            self.calls += found
            if not self._close and not found:
                return rest.strip(), self.calls
            rest = ""
        self._close = None
        return rest, self.calls
