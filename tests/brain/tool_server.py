"""A tenant's HTTP API for brain's tool tests: real HTTP on a local port, every request kept.

- ``GET /orders/{order_id}``: the order as JSON (``status`` and ``eta`` among other fields);
- ``POST /bookings``: echoes the JSON body with a booking id;
- ``GET /slow``: answers after ``slow_s``;
- ``GET /big``: more bytes than a tool may read;
- ``GET /fail``: HTTP 500.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from ..doubles.threaded import ThreadedServer


@dataclass
class ToolServer:
    requests: list[dict[str, Any]] = field(default_factory=list)
    slow_s: float = 1.0
    port: int = 0
    _server: ThreadedServer = field(default_factory=ThreadedServer)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> FastAPI:
        app = FastAPI()

        async def keep(request: Request) -> None:
            body = await request.body()
            self.requests.append({"method": request.method, "path": request.url.path,
                                  "query": dict(request.query_params), "headers": dict(request.headers),
                                  "body": body.decode()})

        @app.get("/orders/{order_id}")
        async def order(order_id: str, request: Request) -> Any:
            await keep(request)
            return {"order": {"id": order_id, "status": "shipped", "eta": "tomorrow", "internal_note": "x" * 50}}

        @app.post("/bookings")
        async def booking(request: Request) -> Any:
            await keep(request)
            return JSONResponse({"booking_id": "B-1", "request": await request.json()}, status_code=201)

        @app.get("/slow")
        async def slow(request: Request) -> Any:
            await keep(request)
            await asyncio.sleep(self.slow_s)
            return {"done": True}

        @app.get("/big")
        async def big(request: Request) -> Any:
            await keep(request)
            return PlainTextResponse("y" * 100_000)

        @app.get("/fail")
        async def fail(request: Request) -> Any:
            await keep(request)
            return JSONResponse({"error": "database down"}, status_code=500)

        return app

    def start(self) -> None:
        self.port = self._server.start(self.app())

    def stop(self) -> None:
        self._server.stop()
