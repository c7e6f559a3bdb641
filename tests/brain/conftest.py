"""Fixtures of brain's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .fake_openai import FakeOpenAI


@pytest.fixture(scope="module")
def openai_double() -> Iterator[FakeOpenAI]:
    """An OpenAI-protocol server over real HTTP (for the production ``openai`` adapter)."""
    f = FakeOpenAI()
    f.start()
    yield f
    f.stop()
