"""Fixtures of brain's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from voice_runtime.bus import Bus
from voice_runtime.memory import InMemoryBus
from voice_runtime.ports import BusPort

from .fake_openai import FakeOpenAI
from .tool_server import ToolServer


@pytest.fixture(scope="module")
def openai_double() -> Iterator[FakeOpenAI]:
    """An OpenAI-protocol server over real HTTP (for the production ``openai`` adapter)."""
    f = FakeOpenAI()
    f.start()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def tool_server() -> Iterator[ToolServer]:
    """A tenant's HTTP API that tools call (real HTTP on a local port)."""
    t = ToolServer()
    t.start()
    yield t
    t.stop()


@pytest.fixture(params=[pytest.param("memory", marks=pytest.mark.unit),
                        pytest.param("nats", marks=pytest.mark.integration)])
async def any_bus(request: pytest.FixtureRequest) -> AsyncIterator[BusPort]:
    """The same test body on the in-memory bus and on a real NATS server of the test's own."""
    if request.param == "memory":
        yield InMemoryBus("test")
        return
    b = await Bus.connect(request.getfixturevalue("private_nats_url"), "test")
    await b.provision()
    yield b
    await b.close()
