"""An OpenAI-compatible chat-completions server for tests: real HTTP + SSE streaming protocol.

Behaviour is scripted per request through ``FakeOpenAI.script`` (text to stream, a tool call, an
HTTP error, a stall, refusing ``tools``, or holding the rest of the stream until the test releases it). Every
request's body and ``Authorization`` header are kept.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse


@dataclass
class Script:
    text: str = "Sure. We open at eight in the morning. See you then!"
    tool: str | None = None
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
    requests: list[dict[str, Any]] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)  # the Authorization header of each request
    release: threading.Event = field(default_factory=threading.Event)
    stream_finished: threading.Event = field(default_factory=threading.Event)  # set once a stream sent its last event
    hold_timeouts: int = 0
    port: int = 0
    _server: uvicorn.Server | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Any:
            body = await request.json()
            self.requests.append(body)
            self.authorizations.append(request.headers.get("authorization"))
            s = self.script
            if s.redirect_to:
                return RedirectResponse(s.redirect_to, status_code=307)
            if s.reject_tools and "tools" in body:
                return JSONResponse({"error": {"message": "tools are not supported"}}, status_code=400)
            if s.status != 200:
                return JSONResponse({"error": {"message": "scripted failure"}}, status_code=s.status)

            async def sse() -> AsyncIterator[str]:
                if s.stall_s:
                    await asyncio.sleep(s.stall_s)
                base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": int(time.time()),
                        "model": body.get("model", "fake")}
                for i, word in enumerate(s.text.split(" ")):
                    if i == s.hold_after_words and not await asyncio.to_thread(self.release.wait, s.hold_s):
                        self.hold_timeouts += 1
                    chunk = dict(base, choices=[{"index": 0, "delta": {"content": word + " "},
                                                 "finish_reason": None}])
                    yield f"data: {json.dumps(chunk)}\n\n"
                    await asyncio.sleep(s.token_delay_s)
                if s.tool:
                    tc = {"index": 0, "id": "call_1", "type": "function",
                          "function": {"name": s.tool, "arguments": "{}"}}
                    chunk = dict(base, choices=[{"index": 0, "delta": {"tool_calls": [tc]}, "finish_reason": None}])
                    yield f"data: {json.dumps(chunk)}\n\n"
                done = dict(base, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])
                yield f"data: {json.dumps(done)}\n\n"
                yield "data: [DONE]\n\n"
                self.stream_finished.set()

            return StreamingResponse(sse(), media_type="text/event-stream")

        return app

    def reset(self, script: Script | None = None) -> None:
        self.script = script or Script()
        self.requests.clear()
        self.authorizations.clear()
        self.release.clear()
        self.stream_finished.clear()
        self.hold_timeouts = 0

    def start(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(self.app(), host="127.0.0.1", port=self.port, log_level="error"))
        threading.Thread(target=self._server.run, daemon=True).start()
        deadline = time.monotonic() + 10
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self) -> None:
        if self._server:
            self._server.should_exit = True
