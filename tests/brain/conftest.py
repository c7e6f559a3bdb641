"""Fixtures of brain's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

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
