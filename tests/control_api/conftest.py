"""Fixtures for the control-api tests: the app in process (lifespan run here), a client, a two-tenant world."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr
from voice_control_api.service import ControlApiService
from voice_control_api.settings import ControlApiSettings
from voice_devstack.stack import embedded_nats

from ..conftest import free_port
from .helpers import BOOTSTRAP_KEY, SECRETS_KEY, TenantCreds, bearer, insert_call, ok, populate, unique_number


def make_settings(database_url: str, nats_url: str, **overrides: Any) -> ControlApiSettings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "nats_url": nats_url,
        "bootstrap_admin_key": SecretStr(BOOTSTRAP_KEY),
        "secrets_key": SecretStr(SECRETS_KEY),
        "rate_limit_per_s": 10_000.0,
        "rate_limit_burst": 1_000_000,
        "kv_reconcile_interval_s": 0.0,
        "log_level": "WARNING",
        "password_hash_time_cost": 1,
        "password_hash_memory_kib": 8192,
        **overrides,
    }
    return ControlApiSettings(**values)


@pytest.fixture(scope="session")
async def service(database_url: str, nats_url: str) -> AsyncIterator[ControlApiService]:
    svc = ControlApiService(make_settings(database_url, nats_url))
    app = svc.app()
    async with app.router.lifespan_context(app):
        svc.test_app = app  # type: ignore[attr-defined]
        yield svc


@pytest.fixture(scope="session")
async def client(service: ControlApiService) -> AsyncIterator[httpx.AsyncClient]:
    app = service.test_app  # type: ignore[attr-defined]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://control-api.test") as c:
        yield c


@pytest.fixture(scope="session")
async def server(service: ControlApiService) -> AsyncIterator[str]:
    """The same app over real HTTP (uvicorn): for streamed responses, which httpx's ASGI transport buffers whole."""
    port = free_port()
    app = service.test_app  # type: ignore[attr-defined]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve())
    while not srv.started:
        await asyncio.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    await task


@pytest.fixture(scope="session")
def platform_key() -> str:
    return BOOTSTRAP_KEY


@pytest.fixture(scope="session")
async def world(client: httpx.AsyncClient, database_url: str) -> dict[str, TenantCreds]:
    """Tenants A and B, each with users, keys, two agents (admin-owned and supervisor-owned), numbers,
    a webhook, a secret, a knowledge base with a document, and calls."""

    out: dict[str, TenantCreds] = {}
    for name in ("A", "B"):
        t = await populate(client, f"tenant {name}")
        admin = bearer(t.admin_key)
        agent_admin = await ok(await client.post("/v1/agents", json={"name": "admin agent"}, headers=admin), 201)
        agent_sup = await ok(
            await client.post("/v1/agents", json={"name": "sup agent"}, headers=bearer(t.sup_jwt)), 201
        )
        num_sup = await ok(
            await client.post(
                "/v1/phone-numbers", json={"number": unique_number(), "agent_id": agent_sup["id"]}, headers=admin
            ),
            201,
        )
        num_admin = await ok(
            await client.post(
                "/v1/phone-numbers", json={"number": unique_number(), "agent_id": agent_admin["id"]}, headers=admin
            ),
            201,
        )
        hook = await ok(
            await client.post(
                "/v1/webhooks", json={"url": "https://hooks.example.com/x", "events": ["call.ended"]}, headers=admin
            ),
            201,
        )
        key = await ok(await client.post("/v1/api-keys", json={"name": "spare"}, headers=admin), 201)
        secret = f"llm_{name}_{uuid.uuid4().hex[:8]}"  # names are per tenant: unique only to tell them apart
        await ok(await client.put(f"/v1/secrets/{secret}", json={"value": f"sk-{name}-value"}, headers=admin), 201)
        kb = await ok(await client.post("/v1/knowledge-bases", json={"name": f"kb {name}"}, headers=admin), 201)
        kb_doc = await ok(
            await client.post(
                f"/v1/knowledge-bases/{kb['id']}/documents",
                files={"file": ("hours.txt", f"Tenant {name} opens at nine.".encode(), "text/plain")},
                headers=admin,
            ),
            201,
        )
        t.resources.update(knowledge_base=kb["id"], knowledge_document=kb_doc["id"])
        trunk = await ok(await client.post("/v1/sip-trunks", json={"name": f"trunk {name}"}, headers=admin), 201)
        t.resources.update(trunk=trunk["id"])
        t.resources.update(
            tenant=t.id,
            user=t.sup_user,
            user2=t.sup2_user,
            admin_user=t.admin_user,
            spare_key=key["id"],
            agent_admin=agent_admin["id"],
            agent_sup=agent_sup["id"],
            number_sup=num_sup["id"],
            number_admin=num_admin["id"],
            webhook=hook["id"],
            secret=secret,
            sup_email=t.sup_email,
        )
        t.resources["call_sup"] = await insert_call(
            database_url, tenant_id=t.id, agent_id=agent_sup["id"], to_number=num_sup["number"]
        )
        t.resources["call_admin"] = await insert_call(
            database_url, tenant_id=t.id, agent_id=agent_admin["id"], to_number=num_admin["number"]
        )
        out[name] = t
    return out


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen[str]


@pytest.fixture(scope="session")
def live_server(database_url: str, nats_url: str) -> Iterator[LiveServer]:
    """``python -m voice_control_api`` as a real process (uvicorn, env settings), shared by e2e and fuzz tests."""
    port = free_port()
    env = dict(
        os.environ,
        NATS_URL=nats_url,
        DATABASE_URL=database_url,
        CONTROL_API_HTTP_PORT=str(port),
        BOOTSTRAP_ADMIN_KEY=BOOTSTRAP_KEY,
        SECRETS_KEY=SECRETS_KEY,
        RATE_LIMIT_PER_S="10000",
        RATE_LIMIT_BURST="1000000",
        PASSWORD_HASH_TIME_COST="1",
        PASSWORD_HASH_MEMORY_KIB="8192",
        KV_RECONCILE_INTERVAL_S="0",
        LOG_LEVEL="WARNING",
        LOG_FORMAT="json",
        SHUTDOWN_GRACE_S="3",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "voice_control_api"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"control-api did not start: {proc.stderr.read() if proc.stderr else ''}")
        yield LiveServer(url=url, process=proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """A NATS server of our own. The KV resync makes the buckets match *this* test database, deleting keys
    nothing in it backs, so these tests must never share a server (e.g. a running `make run`) with others."""
    with embedded_nats() as url:
        yield url


@pytest.fixture(scope="session")
def database_url(postgres_server: str) -> Iterator[str]:
    """A database of our own, for the same reason as ``nats_url``: what is in it is pushed to KV."""
    import asyncio

    import asyncpg

    name = f"voice_test_ctl_{os.getpid()}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(f"{postgres_server}/postgres")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    yield f"{postgres_server}/{name}"
    with contextlib.suppress(Exception):
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
