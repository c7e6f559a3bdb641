"""An OpenAI-compatible chat-completions server for tests: real HTTP + SSE streaming protocol.

Behaviour is scripted per request through ``FakeOpenAI.script`` (text to stream, a tool call with its arguments,
an HTTP error, a stall, refusing ``tools``, or holding the rest of the stream until the test releases it);
``FakeOpenAI.queue`` holds scripts for the next requests, one each, before ``script`` applies again (a tool call,
then the reply that uses its result). Every request's body and ``Authorization`` header are kept. A request with
``"max_tokens": 1`` (brain's prompt warm-up) is kept in ``warmups`` instead and answered with the first word of
the default script, never a queued one. A request with ``"stream": false`` gets one ``chat.completion`` JSON body
with the same text; usage (prompt tokens counted as words of the messages, completion tokens as words of the text)
is sent when ``stream_options.include_usage`` asks and in every non-streamed body. ``/v1/embeddings`` answers
deterministic vectors (``hashed_embedding``) and keeps each request body.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse

from ..doubles.threaded import ThreadedServer

EMBEDDING_DIMENSIONS = 64


def hashed_embedding(text: str) -> list[float]:
    """A deterministic stand-in for a sentence embedding: a bag of the text's words (lower case, 3+ letters, the
    first five letters of each, so 'parking' and 'park' fall apart but 'parking' and 'parked' do not), each hashed
    into one of ``EMBEDDING_DIMENSIONS`` buckets. Texts sharing words point the same way."""
    vector = [0.0] * EMBEDDING_DIMENSIONS
    for word in re.findall(r"[a-z]{3,}", text.lower()):
        vector[zlib.crc32(word[:5].encode()) % EMBEDDING_DIMENSIONS] += 1.0
    return vector


@dataclass
class Script:
    text: str = "Sure. We open at eight in the morning. See you then!"
    tool: str | None = None
    tool_args: dict[str, Any] = field(default_factory=dict)
    status: int = 200
    stall_s: float = 0.0
    token_delay_s: float = 0.01
    reject_tools: bool = False  # answer 400 to a request with ``tools``, as some local servers do
    # after this many words, wait for ``FakeOpenAI.release`` before the rest (``hold_s`` at most: then go on and
    # count it in ``hold_timeouts``)
    hold_after_words: int | None = None
    hold_s: float = 5.0
    redirect_to: str | None = None  # answer 307 with this Location


@dataclass
class FakeOpenAI:
    script: Script = field(default_factory=Script)
    queue: list[Script] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    warmups: list[dict[str, Any]] = field(default_factory=list)  # bodies of one-token requests (prompt warm-ups)
    authorizations: list[str | None] = field(default_factory=list)  # the Authorization header of each request
    release: threading.Event = field(default_factory=threading.Event)
    stream_finished: threading.Event = field(default_factory=threading.Event)  # set once a stream sent its last event
    holding: threading.Event = field(default_factory=threading.Event)  # set once a stream waits at its hold
    hold_timeouts: int = 0
    embedding_requests: list[dict[str, Any]] = field(default_factory=list)  # bodies of /v1/embeddings
    port: int = 0
    _server: ThreadedServer = field(default_factory=ThreadedServer)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Any:
            body = await request.json()
            warmup = body.get("max_tokens") == 1
            if warmup:  # answered with one word, as a real server stops at max_tokens
                self.warmups.append(body)
                s = Script(text=self.script.text.split(" ")[0], status=self.script.status, token_delay_s=0.0)
            else:
                self.requests.append(body)
                self.authorizations.append(request.headers.get("authorization"))
                s = self.queue.pop(0) if self.queue else self.script
            if s.redirect_to:
                return RedirectResponse(s.redirect_to, status_code=307)
            if s.reject_tools and "tools" in body:
                return JSONResponse({"error": {"message": "tools are not supported"}}, status_code=400)
            if s.status != 200:
                return JSONResponse({"error": {"message": "scripted failure"}}, status_code=s.status)
            prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in body.get("messages", []))
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(s.text.split()),
                     "total_tokens": prompt_tokens + len(s.text.split())}
            tool_calls = [{"index": 0, "id": f"call_{len(self.requests)}", "type": "function",
                           "function": {"name": s.tool, "arguments": json.dumps(s.tool_args)}}] if s.tool else []
            if body.get("stream") is False or "stream" not in body:
                if s.stall_s:
                    await asyncio.sleep(s.stall_s)
                message: dict[str, Any] = {"role": "assistant", "content": s.text}
                if tool_calls:
                    message["tool_calls"] = [{k: v for k, v in tc.items() if k != "index"} for tc in tool_calls]
                return JSONResponse({
                    "id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model", "fake"), "usage": usage,
                    "choices": [{"index": 0, "message": message,
                                 "finish_reason": "tool_calls" if tool_calls else "stop"}],
                })
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

            async def sse() -> AsyncIterator[str]:
                if s.stall_s:
                    await asyncio.sleep(s.stall_s)
                base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": int(time.time()),
                        "model": body.get("model", "fake")}
                for i, word in enumerate(s.text.split(" ")):
                    if i == s.hold_after_words:
                        self.holding.set()
                        if not await asyncio.to_thread(self.release.wait, s.hold_s):
                            self.hold_timeouts += 1
                    chunk = dict(base, choices=[{"index": 0, "delta": {"content": word + " "},
                                                 "finish_reason": None}])
                    yield f"data: {json.dumps(chunk)}\n\n"
                    await asyncio.sleep(s.token_delay_s)
                if tool_calls:
                    chunk = dict(base, choices=[{"index": 0, "delta": {"tool_calls": tool_calls},
                                                 "finish_reason": None}])
                    yield f"data: {json.dumps(chunk)}\n\n"
                done = dict(base, choices=[{"index": 0, "delta": {},
                                            "finish_reason": "tool_calls" if tool_calls else "stop"}])
                yield f"data: {json.dumps(done)}\n\n"
                if include_usage:
                    yield f"data: {json.dumps(dict(base, choices=[], usage=usage))}\n\n"
                yield "data: [DONE]\n\n"
                if not warmup:
                    self.stream_finished.set()

            return StreamingResponse(sse(), media_type="text/event-stream")

        @app.post("/v1/embeddings")
        async def embeddings(request: Request) -> Any:
            body = await request.json()
            self.embedding_requests.append(body)
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            data = [{"object": "embedding", "index": i, "embedding": hashed_embedding(text)}
                    for i, text in enumerate(inputs)]
            return JSONResponse({"object": "list", "data": data, "model": body.get("model", "fake"),
                                 "usage": {"prompt_tokens": 0, "total_tokens": 0}})

        return app

    def reset(self, script: Script | None = None) -> None:
        self.script = script or Script()
        self.queue.clear()
        self.requests.clear()
        self.warmups.clear()
        self.authorizations.clear()
        self.release.clear()
        self.stream_finished.clear()
        self.holding.clear()
        self.hold_timeouts = 0
        self.embedding_requests.clear()

    def start(self) -> None:
        self.port = self._server.start(self.app())

    def stop(self) -> None:
        self._server.stop()
