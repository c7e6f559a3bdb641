"""Shared fixtures: real NATS and PostgreSQL, started embedded when none is reachable."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from voice_devstack.stack import EmbeddedPostgres, embedded_nats, free_port, jetstream_ok, port_open

REPO = Path(__file__).resolve().parents[1]

# The suite is hermetic: settings a developer may have exported for `make run` or a real deployment (a Twilio
# token, a public URL, an LLM endpoint, keys) would change what the services under test do. Only the
# infrastructure locations below are honoured (the fixtures use them on purpose); tests that need a setting
# pass it explicitly.
HONOURED = {"NATS_URL", "DATABASE_URL", "LLM_BASE_URL", "LLM_MODEL", "STATE_DIR"}
PLATFORM_PREFIXES = ("TWILIO_", "PUBLIC_BASE_URL", "LLM_", "SECRETS_KEY", "EGRESS_", "BOOTSTRAP_", "LOG_",
                     "OTEL_", "JWT_", "INGRESS_", "MEDIA_", "STT_", "BRAIN_", "TTS_", "ANALYTICS_", "CONTROL_API_",
                     "HTTP_", "VAD_", "TURN_", "TRUSTED_PROXIES", "FORWARDED_HEADER", "PLAYOUT_", "WEBRTC_",
                     "CALL_TOKEN_", "CONSOLE_", "EMBEDDINGS_", "KNOWLEDGE_",
                     "NATS_REPLICAS", "NATS_AUDIO_STORAGE", "NATS_CLUSTER")


def scrub_environment(env: dict[str, str]) -> list[str]:
    removed = [k for k in env if k.upper().startswith(PLATFORM_PREFIXES) and k.upper() not in HONOURED]
    for k in removed:
        del env[k]
    return removed


scrub_environment(os.environ)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    url = os.environ.get("NATS_URL")
    if url:
        yield url
        return
    if port_open("127.0.0.1", 4222) and asyncio.run(jetstream_ok("nats://127.0.0.1:4222")):
        yield "nats://127.0.0.1:4222"
        return
    with embedded_nats() as embedded:
        yield embedded


@pytest.fixture
def private_nats_url() -> Iterator[str]:
    """A NATS server of this test's own, for tests whose durable consumers must see only their messages
    (a running platform on the shared server would compete for them)."""
    with embedded_nats() as url:
        yield url


@pytest.fixture
async def private_bus(private_nats_url: str) -> AsyncIterator[object]:
    """The platform's bus on the test's own NATS server, its streams and buckets provisioned."""
    from voice_runtime.bus import Bus

    b = await Bus.connect(private_nats_url, "test")
    await b.provision()
    yield b
    await b.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """DSN prefix (without database) of a reachable PostgreSQL."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url.rsplit("/", 1)[0]
        return
    if port_open("127.0.0.1", 5432):
        yield "postgresql://postgres@127.0.0.1:5432"
        return
    pg = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="voice-pg-")), port=free_port())
    pg.start()
    try:
        yield f"postgresql://postgres@127.0.0.1:{pg.port}"
    finally:
        pg.stop()


@pytest.fixture(scope="session")
def database_url(postgres_server: str) -> str:
    """A fresh database for this test session (dropped and re-created)."""
    import asyncpg

    name = f"voice_test_{os.getpid()}"

    async def recreate() -> None:
        conn = await asyncpg.connect(f"{postgres_server}/postgres")
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(recreate())
    return f"{postgres_server}/{name}"


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[object]:
    from voice_runtime.bus import Bus

    b = await Bus.connect(nats_url, "test")
    await b.provision()
    yield b
    await b.close()
