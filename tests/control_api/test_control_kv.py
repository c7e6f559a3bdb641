"""Agent and number configuration lands in JetStream KV; a resync repairs drift without rolling back."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import nats
import pytest
from nats.js.errors import KeyNotFoundError
from voice_control_api.kvsync import _entries
from voice_control_api.service import ControlApiService
from voice_schemas import subjects
from voice_schemas.agent import AgentConfig, NumberRoute

from .helpers import TenantCreds, bearer, ok, populate, unique_number

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def tenant(client: httpx.AsyncClient) -> TenantCreds:
    return await populate(client, "kv")


async def kv_json(service: ControlApiService, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        entry = await service.kv[bucket].get(key)
    except KeyNotFoundError:
        return None
    return json.loads(entry.value) if entry.value else None


async def test_agent_changes_land_in_kv(
    client: httpx.AsyncClient, service: ControlApiService, tenant: TenantCreds
) -> None:
    admin = bearer(tenant.admin_key)
    agent = await ok(
        await client.post(
            "/v1/agents",
            json={"name": "kv", "system_prompt": "first", "llm": {"model": "m", "temperature": 0.1}},
            headers=admin,
        ),
        201,
    )
    current = await kv_json(service, "agents", subjects.agent_key(agent["id"]))
    assert current is not None
    cfg = AgentConfig.model_validate(current)  # the data plane's own contract parses it
    assert (cfg.id, cfg.tenant_id, cfg.version, cfg.system_prompt) == (agent["id"], tenant.id, 1, "first")
    assert cfg.llm.model == "m" and cfg.llm.temperature == 0.1 and cfg.llm.base_url is None
    assert await kv_json(service, "agents", subjects.agent_version_key(agent["id"], 1)) == current
    assert set(current) == set(AgentConfig.model_fields)

    await ok(await client.patch(f"/v1/agents/{agent['id']}", json={"system_prompt": "second"}, headers=admin))
    current = await kv_json(service, "agents", subjects.agent_key(agent["id"]))
    assert current is not None and current["version"] == 2 and current["system_prompt"] == "second"
    v1 = await kv_json(service, "agents", subjects.agent_version_key(agent["id"], 1))
    assert v1 is not None and v1["version"] == 1 and v1["system_prompt"] == "first"  # old versions stay intact

    deployment = await ok(await client.get(f"/v1/agents/{agent['id']}/deployment", headers=admin))
    assert deployment["in_sync"] and deployment["kv_version"] == 2 and deployment["config"] == current
    assert deployment["kv_key"] == f"a.{agent['id']}" and deployment["kv_bucket"] == "agents"

    await ok(await client.delete(f"/v1/agents/{agent['id']}", headers=admin), 204)
    assert await kv_json(service, "agents", subjects.agent_key(agent["id"])) is None
    assert await kv_json(service, "agents", subjects.agent_version_key(agent["id"], 2)) is not None


async def test_number_routes_land_in_kv(
    client: httpx.AsyncClient, service: ControlApiService, tenant: TenantCreds
) -> None:
    admin = bearer(tenant.admin_key)
    a1 = await ok(await client.post("/v1/agents", json={"name": "r1"}, headers=admin), 201)
    a2 = await ok(await client.post("/v1/agents", json={"name": "r2"}, headers=admin), 201)
    number = unique_number()
    created = await ok(
        await client.post("/v1/phone-numbers", json={"number": number, "agent_id": a1["id"]}, headers=admin), 201
    )
    route = await kv_json(service, "numbers", subjects.number_key(number))
    assert route is not None
    assert NumberRoute.model_validate(route) == NumberRoute(number=number, tenant_id=tenant.id, agent_id=a1["id"])

    await ok(await client.patch(f"/v1/phone-numbers/{created['id']}", json={"agent_id": a2["id"]}, headers=admin))
    assert (await kv_json(service, "numbers", subjects.number_key(number)) or {})["agent_id"] == a2["id"]

    new_number = unique_number()
    await ok(await client.patch(f"/v1/phone-numbers/{created['id']}", json={"number": new_number}, headers=admin))
    assert await kv_json(service, "numbers", subjects.number_key(number)) is None
    assert (await kv_json(service, "numbers", subjects.number_key(new_number)) or {})["agent_id"] == a2["id"]

    await ok(await client.delete(f"/v1/phone-numbers/{created['id']}", headers=admin), 204)
    assert await kv_json(service, "numbers", subjects.number_key(new_number)) is None


async def test_resync_repairs_drift_and_never_rolls_back(
    client: httpx.AsyncClient, service: ControlApiService, tenant: TenantCreds
) -> None:
    admin = bearer(tenant.admin_key)
    agents_kv, numbers_kv = service.kv["agents"], service.kv["numbers"]
    agent = await ok(await client.post("/v1/agents", json={"name": "drift"}, headers=admin), 201)
    number = unique_number()
    await ok(
        await client.post("/v1/phone-numbers", json={"number": number, "agent_id": agent["id"]}, headers=admin), 201
    )
    ghost = AgentConfig(id="ghost" + agent["id"][:8], tenant_id=tenant.id)
    # drift: a lost write, a wrong route, keys nothing in PostgreSQL backs
    await agents_kv.delete(subjects.agent_key(agent["id"]))
    await numbers_kv.put(
        subjects.number_key(number),
        NumberRoute(number=number, tenant_id=tenant.id, agent_id="wrong").model_dump_json().encode(),
    )
    await agents_kv.put(subjects.agent_key(ghost.id), ghost.model_dump_json().encode())
    await agents_kv.put(subjects.agent_version_key(ghost.id, 1), ghost.model_dump_json().encode())
    await numbers_kv.put("n19995550000", b'{"number": "+19995550000", "tenant_id": "x", "agent_id": "y"}')

    await service.resync()
    # the service's own background resync (periodic, or asked for by a failed KV write of another test) may
    # repair the drift first: what is checked is the state of KV, not which resync did it
    for bucket, key in (
        ("agents", subjects.agent_key(ghost.id)),
        ("agents", subjects.agent_version_key(ghost.id, 1)),
        ("numbers", "n19995550000"),
    ):
        assert await kv_json(service, bucket, key) is None, key
    assert (await kv_json(service, "agents", subjects.agent_key(agent["id"])) or {})["version"] == 1
    assert (await kv_json(service, "numbers", subjects.number_key(number)) or {})["agent_id"] == agent["id"]
    assert await kv_json(service, "agents", subjects.agent_key(ghost.id)) is None

    # KV already holding a newer version (a concurrent writer won): a resync from an older snapshot keeps it
    newer = AgentConfig.model_validate(
        {**(await kv_json(service, "agents", subjects.agent_key(agent["id"])) or {}), "version": 50}
    )
    await agents_kv.put(subjects.agent_key(agent["id"]), newer.model_dump_json().encode())
    await service.resync()
    assert (await kv_json(service, "agents", subjects.agent_key(agent["id"])) or {})["version"] == 50
    deployment = await ok(await client.get(f"/v1/agents/{agent['id']}/deployment", headers=admin))
    assert not deployment["in_sync"] and deployment["kv_version"] == 50
    await agents_kv.delete(subjects.agent_key(agent["id"]))
    await service.resync()
    assert (await ok(await client.get(f"/v1/agents/{agent['id']}/deployment", headers=admin)))["in_sync"]


async def test_failed_kv_write_is_repaired_in_the_background(
    client: httpx.AsyncClient, service: ControlApiService, tenant: TenantCreds, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert service.publisher is not None

    async def broken(*_: Any) -> bool:
        raise ConnectionError("NATS unavailable")

    monkeypatch.setattr(service.publisher, "publish_agent", broken)
    agent = await ok(await client.post("/v1/agents", json={"name": "later"}, headers=bearer(tenant.admin_key)), 201)
    for _ in range(100):  # the reconcile loop was woken by the failure
        if await kv_json(service, "agents", subjects.agent_key(agent["id"])) is not None:
            break
        await asyncio.sleep(0.05)
    assert (await kv_json(service, "agents", subjects.agent_key(agent["id"])) or {})["version"] == 1


async def test_resync_from_an_empty_database_deletes_nothing(service: ControlApiService) -> None:
    """A wrong DATABASE_URL (an empty database) must not wipe the routing of a running platform."""
    from voice_control_api.kvsync import Snapshot

    assert service.publisher is not None
    key = "n19995550001"
    await service.kv["numbers"].put(key, b'{"number": "+19995550001", "tenant_id": "t", "agent_id": "a"}')

    async def empty() -> Snapshot:
        return Snapshot(agents=[], versions=set(), numbers=[])

    report = await service.publisher.resync(empty)
    assert report.keys_deleted == [] and await kv_json(service, "numbers", key) is not None
    await service.resync()  # the real database: the stray key goes
    assert await kv_json(service, "numbers", key) is None


async def test_bucket_snapshot_sees_every_key_while_writes_go_on(nats_url: str) -> None:
    """The resync's read of a bucket must never come back short: a short read (nats-py's watcher can end its
    snapshot before the first key arrives) would make drift look repaired and ghosts survive."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    bucket = f"snap_{unique_number()[1:]}"
    kv = await js.create_key_value(bucket=bucket, history=1)
    try:
        keys = {f"k{i}" for i in range(300)}
        await asyncio.gather(*(kv.put(k, b"v") for k in keys))
        for k in list(keys)[:20]:
            await kv.delete(k)
        live = keys - set(list(keys)[:20])
        hot = set(sorted(live)[:10])

        async def churn() -> None:  # another writer touching live keys while the snapshot is read
            while True:
                for k in hot:
                    await kv.put(k, b"w")
                await asyncio.sleep(0)

        writer = asyncio.create_task(churn())
        try:
            for _ in range(25):
                seen = await _entries(kv)
                # a key rewritten while it is read may be missed (that write is newer than the snapshot, and the
                # resync leaves such keys alone anyway); every other live key must be there, no deleted one
                assert live - hot <= set(seen) <= live
                assert all(e.value in (b"v", b"w") and e.revision for e in seen.values())
        finally:
            writer.cancel()
        empty = await js.create_key_value(bucket=bucket + "e", history=1)
        assert await _entries(empty) == {}
        await js.delete_key_value(bucket + "e")
    finally:
        await js.delete_key_value(bucket)
        await nc.close()
