"""A fake chat model for fast tests of brain's logic: scripted replies per caller text, no HTTP.

``FakeChatModel`` subclasses the real ``ChatModel`` base, so the limits (first token, total), metrics and the
wrapping of failures are the production ones; only ``_stream`` is scripted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from voice_brain.chat import ChatLimits, ChatModel, ChatRequest, Delta, Endpoint, ToolCall


@dataclass
class FakeReply:
    """What the model answers: ``content`` streamed ``chunk_chars`` at a time after ``ttft_s``."""

    content: str = "Sure. We open at eight in the morning. See you then!"
    ttft_s: float = 0.0
    token_delay_s: float = 0.0
    chunk_chars: int = 4
    tool_calls: tuple[ToolCall, ...] = ()
    fail_after_chars: int | None = None  # raise after streaming this much text
    stall_after_chars: int | None = None  # then never send anything again


class ScriptedFailure(RuntimeError):
    pass


@dataclass
class FakeChatProvider:
    """The provider: replies by the last user message (``default`` for any other), every request kept."""

    limits: ChatLimits = field(default_factory=lambda: ChatLimits(first_token_timeout_s=0.5, total_timeout_s=2.0))
    replies: dict[str, FakeReply] = field(default_factory=dict)
    default: FakeReply = field(default_factory=FakeReply)
    requests: list[tuple[Endpoint, str, ChatRequest]] = field(default_factory=list)
    # prompt warm-ups (a request for one token, ``ChatModel.warm``): kept here, not in ``requests``
    warmups: list[tuple[Endpoint, str, ChatRequest]] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)  # set when a stream begins
    closed: bool = False
    name: str = "fake"

    def model(self, endpoint: Endpoint, model: str) -> ChatModel:
        return FakeChatModel(self, endpoint, model)

    async def aclose(self) -> None:
        self.closed = True

    def reply_for(self, request: ChatRequest) -> FakeReply:
        users = [m for m in request.messages if m.get("role") == "user"]
        return self.replies.get(str(users[-1]["content"]) if users else "", self.default)


class FakeChatModel(ChatModel):
    provider: ClassVar[str] = "fake"

    def __init__(self, owner: FakeChatProvider, endpoint: Endpoint, model: str) -> None:
        super().__init__(model, owner.limits)
        self.owner, self.endpoint = owner, endpoint

    async def _stream(self, request: ChatRequest) -> AsyncIterator[Delta]:
        if request.max_tokens == 1:  # a warm-up: one token, as a real server stops there
            self.owner.warmups.append((self.endpoint, self.model, request))
            yield Delta(text=self.owner.default.content[:1])
            return
        self.owner.requests.append((self.endpoint, self.model, request))
        self.owner.started.set()
        r = self.owner.reply_for(request)
        await asyncio.sleep(r.ttft_s)
        sent = 0
        for i in range(0, len(r.content), r.chunk_chars):
            if r.fail_after_chars is not None and sent >= r.fail_after_chars:
                raise ScriptedFailure("scripted failure")
            if r.stall_after_chars is not None and sent >= r.stall_after_chars:
                await asyncio.Event().wait()
            piece = r.content[i : i + r.chunk_chars]
            sent += len(piece)
            yield Delta(text=piece)
            if r.token_delay_s:
                await asyncio.sleep(r.token_delay_s)
        if r.fail_after_chars is not None and sent >= r.fail_after_chars:
            raise ScriptedFailure("scripted failure")
        if r.stall_after_chars is not None and sent >= r.stall_after_chars:
            await asyncio.Event().wait()
        if r.tool_calls:
            yield Delta(tool_calls=r.tool_calls)


def user_texts(request: ChatRequest) -> list[Any]:
    return [m["content"] for m in request.messages if m.get("role") == "user"]


def fake_provider(limits: ChatLimits) -> FakeChatProvider:
    """A ``ProviderFactory``, as a package would name it in the ``voice.chat_models`` entry-point group."""
    return FakeChatProvider(limits=limits)
