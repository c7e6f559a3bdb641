"""How every service serves (``voice_runtime.service``): what a media stream's WebSocket gets, and the heap built at
start kept out of the garbage collector's full collections once serving."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator

import pytest
import uvicorn
from fastapi import FastAPI, WebSocket
from voice_devstack.stack import free_port
from voice_runtime.service import _Server, event_loop_factory, server_config
from voice_runtime.settings import CommonSettings
from websockets.asyncio.client import connect

pytestmark = pytest.mark.unit


async def test_a_client_offering_permessage_deflate_gets_plain_frames() -> None:
    """Every message of a media stream is 20 ms of audio: deflating each costs CPU on the loop that paces the calls'
    audio and saves next to nothing, so the server declines the extension the client (as websockets' does) offers."""
    app = FastAPI()

    @app.websocket("/echo")
    async def echo(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text(await ws.receive_text())
        await ws.close()

    port = free_port()
    server = uvicorn.Server(server_config(app, CommonSettings(http_port=port), ws=True))
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(200):
            if server.started:
                break
            await asyncio.sleep(0.02)
        assert server.started
        async with connect(f"ws://127.0.0.1:{port}/echo", compression="deflate") as ws:
            assert ws.request is not None and ws.response is not None
            assert "permessage-deflate" in (ws.request.headers.get("Sec-WebSocket-Extensions") or "")
            assert ws.response.headers.get("Sec-WebSocket-Extensions") is None  # declined
            assert ws.protocol.extensions == []
            await ws.send('{"event": "media"}')
            assert await ws.recv() == '{"event": "media"}'
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def test_a_serving_service_has_frozen_its_startup_heap() -> None:
    """A full collection walked the whole startup heap (170-250 ms measured on 2 cores, with the playout lead at
    60 ms): once the server is up, and not before, it is frozen."""
    gc.unfreeze()
    frozen_at_start: list[int] = []

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:  # the service's own start: not frozen yet
        frozen_at_start.append(gc.get_freeze_count())
        yield

    app = FastAPI(lifespan=lifespan)
    server = _Server(server_config(app, CommonSettings(http_port=free_port())))
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(250):
            if server.started:
                break
            await asyncio.sleep(0.02)
        assert server.started and frozen_at_start == [0]
        assert gc.get_freeze_count() > 1000  # this process's modules, at least
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        gc.unfreeze()


def test_the_event_loop_is_uvloop_unless_asked_for_asyncio() -> None:
    import uvloop

    assert event_loop_factory(CommonSettings().event_loop) is uvloop.new_event_loop
    assert event_loop_factory("asyncio") is None
