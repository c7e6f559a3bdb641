"""The chat model behind a small interface; the OpenAI-compatible implementation streams."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from openai import AsyncOpenAI, BadRequestError


@dataclass
class Delta:
    text: str = ""
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


class ChatModel(Protocol):
    def stream(self, *, base_url: str, model: str, messages: list[dict[str, Any]], temperature: float,
               max_tokens: int, tools: list[dict[str, Any]] | None) -> AsyncIterator[Delta]: ...


END_CALL_TOOL = {
    "type": "function",
    "function": {
        "name": "end_call",
        "description": "Hang up the phone call after saying goodbye, when the caller is done.",
        "parameters": {"type": "object", "properties": {"reason": {"type": "string"}}},
    },
}


class OpenAIChatModel:
    """Any OpenAI-compatible endpoint, through the `openai` client (one client per base URL)."""

    def __init__(self, api_key: str, timeout_s: float) -> None:
        self.api_key, self.timeout_s = api_key, timeout_s
        self._clients: dict[str, AsyncOpenAI] = {}
        self._no_tools: set[str] = set()  # endpoints that reject `tools`

    def _client(self, base_url: str) -> AsyncOpenAI:
        c = self._clients.get(base_url)
        if c is None:
            c = self._clients[base_url] = AsyncOpenAI(base_url=base_url, api_key=self.api_key,
                                                      timeout=self.timeout_s, max_retries=0)
        return c

    async def stream(self, *, base_url: str, model: str, messages: list[dict[str, Any]], temperature: float,
                     max_tokens: int, tools: list[dict[str, Any]] | None) -> AsyncIterator[Delta]:
        client = self._client(base_url)
        kw: dict[str, Any] = dict(model=model, messages=messages, temperature=temperature,
                                  max_tokens=max_tokens, stream=True)
        if tools and base_url not in self._no_tools:
            kw["tools"] = tools
        try:
            stream = await client.chat.completions.create(**kw)
        except BadRequestError:
            if "tools" not in kw:
                raise
            self._no_tools.add(base_url)
            kw.pop("tools")
            stream = await client.chat.completions.create(**kw)
        calls: dict[int, dict[str, str]] = {}
        async for chunk in stream:
            if not chunk.choices:
                continue
            d = chunk.choices[0].delta
            if d.tool_calls:
                for tc in d.tool_calls:
                    slot = calls.setdefault(tc.index, {"name": "", "args": ""})
                    if tc.function and tc.function.name:
                        slot["name"] += tc.function.name
                    if tc.function and tc.function.arguments:
                        slot["args"] += tc.function.arguments
            if d.content:
                yield Delta(text=d.content)
        if calls:
            parsed = []
            for slot in calls.values():
                try:
                    args = json.loads(slot["args"]) if slot["args"] else {}
                except json.JSONDecodeError:
                    args = {}
                parsed.append((slot["name"], args if isinstance(args, dict) else {}))
            yield Delta(tool_calls=parsed)
