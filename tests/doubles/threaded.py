"""An ASGI app served by uvicorn in a thread of its own on a free loopback port: for test doubles that must answer
while the test's own event loop is busy (or blocked) elsewhere."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn


class ThreadedServer:
    def __init__(self) -> None:
        self.port = 0
        self._server: uvicorn.Server | None = None

    def start(self, app: Any) -> int:
        """Serve ``app``; its port once it accepts connections."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        threading.Thread(target=self._server.run, daemon=True).start()
        deadline = time.monotonic() + 10
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.port

    def stop(self) -> None:
        if self._server:
            self._server.should_exit = True
