"""These tests run against a JetStream server of their own: stage services share durable consumers
with any other replica connected to the same server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from voice_devstack.stack import embedded_nats


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    with embedded_nats() as url:
        yield url
