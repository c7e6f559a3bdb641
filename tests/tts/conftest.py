"""tts tests run against a JetStream server of their own (see ``tests/stt/natsd.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..stt.natsd import private_nats


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    with private_nats() as url:
        yield url
