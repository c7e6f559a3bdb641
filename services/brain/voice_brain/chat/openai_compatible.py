"""Provider ``openai``: any OpenAI-compatible chat-completions endpoint (llama.cpp, vLLM, Ollama, OpenAI...)
through the ``openai`` client, streamed.

One ``AsyncOpenAI`` client is kept per endpoint (URL, key and guard), at most ``LLM_OPENAI_MAX_CLIENTS`` of
them: an agent may name its own endpoint, and a client keeps its connection pool warm between turns. An agent's
endpoint is reached through the egress guard (its httpx client refuses internal addresses at connect time and on
redirects); an endpoint without a key is called with no ``Authorization`` header. Endpoints that reject the
``tools`` parameter (HTTP 400) are remembered and called without tools from then on. Usage is asked for
(``stream_options.include_usage``); an endpoint that rejects that too is called without it from then on.
Tool calls written as text (``<tool_call>{...}</tool_call>``, as llama.cpp returns Qwen's) are taken out of the
spoken text and returned as calls (``textcalls.py``).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, ClassVar

from openai import AsyncOpenAI, BadRequestError, Timeout, omit
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from voice_runtime.egress import guarded_client

from .base import ChatLimits, ChatModel, ChatRequest, Delta, Endpoint, ToolCall, Usage
from .textcalls import TextToolCalls


class OpenAIChatSettings(BaseSettings):
    """Settings of this engine only (environment, prefix ``LLM_OPENAI_``)."""

    model_config = SettingsConfigDict(env_prefix="LLM_OPENAI_", env_file=None, extra="ignore")

    # a retry inside the first-token budget only delays the apology; the caller's next turn is the retry
    max_retries: int = Field(0, ge=0, le=3, description="Client retries of a failed request")
    connect_timeout_s: float = Field(3.0, gt=0, description="TCP/TLS connect bound per request")
    max_clients: int = Field(64, ge=1, description="Endpoints kept with a live client (oldest dropped first)")


@dataclass
class _Client:
    client: AsyncOpenAI
    keyed: bool = True  # False: requests carry no Authorization header
    tools_supported: bool = True
    usage_supported: bool = True


class OpenAIChatModel(ChatModel):
    provider: ClassVar[str] = "openai"

    def __init__(self, client: _Client, model: str, limits: ChatLimits) -> None:
        super().__init__(model, limits)
        self._c = client

    async def _stream(self, request: ChatRequest) -> AsyncIterator[Delta]:
        client = self._c.client
        kw: dict[str, Any] = dict(model=self.model, messages=[dict(m) for m in request.messages],
                                  temperature=request.temperature, max_tokens=request.max_tokens, stream=True)
        if request.tools and self._c.tools_supported:
            kw["tools"] = [dict(t) for t in request.tools]
        if self._c.usage_supported:
            kw["stream_options"] = {"include_usage": True}
        if not self._c.keyed:
            kw["extra_headers"] = {"Authorization": omit}
        try:
            stream = await client.chat.completions.create(**kw)
        except BadRequestError:
            if "tools" not in kw and "stream_options" not in kw:
                raise
            # which one the server refused is not said in a standard way: drop both, remember both
            self._c.tools_supported = self._c.tools_supported and "tools" not in kw
            self._c.usage_supported = self._c.usage_supported and "stream_options" not in kw
            kw.pop("tools", None)
            kw.pop("stream_options", None)
            stream = await client.chat.completions.create(**kw)
        calls: dict[int, dict[str, str]] = {}
        usage: Usage | None = None
        in_text = TextToolCalls()  # tool calls a model writes as text (llama.cpp serving Qwen): never spoken
        try:
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = Usage(chunk.usage.prompt_tokens or 0, chunk.usage.completion_tokens or 0)
                if not chunk.choices:
                    continue
                d = chunk.choices[0].delta
                for tc in d.tool_calls or ():
                    slot = calls.setdefault(tc.index, {"name": "", "args": "", "id": ""})
                    if tc.id:
                        slot["id"] = tc.id
                    if tc.function and tc.function.name:
                        slot["name"] += tc.function.name
                    if tc.function and tc.function.arguments:
                        slot["args"] += tc.function.arguments
                if d.content and (speak := in_text.push(d.content)):
                    yield Delta(text=speak)
        finally:
            await stream.close()
        rest, written = in_text.finish()
        if rest:
            yield Delta(text=rest)
        if calls or written:
            yield Delta(tool_calls=(*(_tool_call(s["name"], s["args"], s["id"]) for s in calls.values()), *written))
        if usage is not None:
            yield Delta(usage=usage)


def _tool_call(name: str, raw_args: str, call_id: str = "") -> ToolCall:
    try:
        args = json.loads(raw_args) if raw_args.strip() else {}
    except json.JSONDecodeError:
        return ToolCall(name, {}, call_id, malformed=True)
    if not isinstance(args, dict):
        return ToolCall(name, {}, call_id, malformed=True)
    return ToolCall(name, args, call_id)


class OpenAIProvider:
    name = "openai"

    def __init__(self, limits: ChatLimits, settings: OpenAIChatSettings | None = None) -> None:
        self.limits = limits
        self.settings = settings or OpenAIChatSettings()
        self._clients: OrderedDict[Endpoint, _Client] = OrderedDict()

    def model(self, endpoint: Endpoint, model: str) -> ChatModel:
        return OpenAIChatModel(self._client(endpoint), model, self.limits)

    def _client(self, endpoint: Endpoint) -> _Client:
        c = self._clients.get(endpoint)
        if c is not None:
            self._clients.move_to_end(endpoint)
            return c
        s = self.settings
        kw: dict[str, Any] = {}
        if endpoint.egress is not None:
            # the SDK's own client follows redirects too; each hop connects through the guard
            kw["http_client"] = guarded_client(endpoint.egress, follow_redirects=True)
        c = self._clients[endpoint] = _Client(AsyncOpenAI(
            # the SDK refuses to start without a key; a keyless endpoint's requests omit the header (``_stream``)
            base_url=endpoint.base_url, api_key=endpoint.api_key or "unused", max_retries=s.max_retries,
            timeout=Timeout(self.limits.total_timeout_s, connect=s.connect_timeout_s), **kw,
        ), keyed=bool(endpoint.api_key))
        while len(self._clients) > s.max_clients:
            # not closed here: a reply may still be streaming through it; its pool is freed with it
            self._clients.popitem(last=False)
        return c

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), OrderedDict()
        for c in clients:
            await c.client.close()


def provider(limits: ChatLimits) -> OpenAIProvider:
    """The registry's entry for ``LLM_PROVIDER=openai``."""
    return OpenAIProvider(limits)
