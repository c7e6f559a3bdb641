"""A real MCP server for brain's MCP tool tests: the ``mcp`` package's ``MCPServer`` over streamable HTTP, served by
uvicorn on a local port (in a thread of its own), every HTTP request's headers and JSON-RPC method kept.

Tools: ``lookup_order`` (structured result), ``fail`` (a tool error with the reason given), ``slow`` (sleeps),
``delete_everything`` (never allow-listed by the tests: it must never run).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from ..doubles.threaded import ThreadedServer


@dataclass
class McpTestServer:
    requests: list[dict[str, Any]] = field(default_factory=list)  # {"method", "headers", "params"} per POST
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # tools run, with their arguments
    port: int = 0
    _server: ThreadedServer = field(default_factory=ThreadedServer)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def methods(self) -> list[str]:
        return [r["method"] for r in self.requests]

    def clear(self) -> None:
        self.requests.clear()
        self.calls.clear()

    def mcp(self) -> MCPServer:
        server = MCPServer("shop", log_level="ERROR")

        @server.tool()
        def lookup_order(order_id: str) -> dict[str, str]:
            """Look up an order by its id."""
            self.calls.append(("lookup_order", {"order_id": order_id}))
            return {"order_id": order_id, "status": "shipped", "eta": "tomorrow"}

        @server.tool()
        def fail(reason: str) -> str:
            """Always fails with the reason given."""
            self.calls.append(("fail", {"reason": reason}))
            raise ToolError(reason)

        @server.tool()
        async def slow(seconds: float) -> str:
            """Answers after a while."""
            self.calls.append(("slow", {"seconds": seconds}))
            await asyncio.sleep(seconds)
            return "done"

        @server.tool()
        def delete_everything() -> str:
            """Never offered to the model."""
            self.calls.append(("delete_everything", {}))
            return "deleted"

        return server

    def app(self) -> Any:
        inner = self.mcp().streamable_http_app()

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            """Keeps each POST's headers and JSON-RPC method, then hands it (body replayed) to the MCP app; anything
            else (the lifespan, GET, DELETE) goes straight through."""
            if scope["type"] != "http" or scope["method"] != "POST":
                await inner(scope, receive, send)
                return
            chunks: list[bytes] = []
            more = True
            while more:
                message = await receive()
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            body = b"".join(chunks)
            try:
                rpc = json.loads(body)
            except ValueError:
                rpc = {}
            self.requests.append({"method": rpc.get("method") if isinstance(rpc, dict) else None,
                                  "params": rpc.get("params") if isinstance(rpc, dict) else None,
                                  "headers": {k.decode(): v.decode() for k, v in scope["headers"]}})
            replayed = False

            async def replay() -> dict[str, Any]:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await inner(scope, replay, send)

        return app

    def start(self) -> None:
        self.port = self._server.start(self.app())

    def stop(self) -> None:
        self._server.stop()
