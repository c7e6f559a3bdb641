"""The README walkthrough against a real ``python -m voice_control_api`` process, as a new user drives it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import nats
import pytest
from voice_schemas import subjects

from .conftest import LiveServer
from .helpers import BOOTSTRAP_KEY, PASSWORD, insert_call, unique_number

pytestmark = pytest.mark.e2e


async def _kv_get(nats_url: str, bucket: str, key: str) -> dict[str, object]:
    nc = await nats.connect(nats_url)
    try:
        entry = await (await nc.jetstream().key_value(bucket)).get(key)
        return json.loads(entry.value or b"{}")  # type: ignore[no-any-return]
    finally:
        await nc.close()


def test_readme_walkthrough(live_server: LiveServer, nats_url: str, database_url: str) -> None:
    with httpx.Client(base_url=live_server.url, timeout=10) as http:
        # 1. the platform admin (BOOTSTRAP_ADMIN_KEY) creates a tenant and gets its first admin key
        r = http.post("/v1/tenants", json={"name": "Acme Dental"}, headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}"})
        assert r.status_code == 201, r.text
        tenant = r.json()
        root = {"Authorization": f"Bearer {tenant['admin_api_key']}"}

        # 2. a named admin key for automation
        r = http.post("/v1/api-keys", json={"name": "ci"}, headers=root)
        assert r.status_code == 201, r.text
        admin = {"Authorization": f"Bearer {r.json()['key']}"}

        # 3. an agent and a number routed to it
        r = http.post(
            "/v1/agents",
            headers=admin,
            json={
                "name": "Front desk",
                "system_prompt": "You are the front desk of Acme Dental.",
                "first_message": "Hi, Acme Dental!",
                "llm": {"temperature": 0.4},
                "turn": {"end_of_turn_ms": 500},
            },
        )
        assert r.status_code == 201, r.text
        agent = r.json()
        number = unique_number()
        r = http.post("/v1/phone-numbers", json={"number": number, "agent_id": agent["id"]}, headers=admin)
        assert r.status_code == 201, r.text

        # 4. the config is in KV, where ingress and brain read it
        r = http.get(f"/v1/agents/{agent['id']}/deployment", headers=admin)
        assert r.status_code == 200 and r.json()["in_sync"], r.text
        held = asyncio.run(_kv_get(nats_url, "agents", subjects.agent_key(agent["id"])))
        assert (
            held["version"] == 1 and held["tenant_id"] == tenant["id"] and held["first_message"] == "Hi, Acme Dental!"
        )
        route = asyncio.run(_kv_get(nats_url, "numbers", subjects.number_key(number)))
        assert route == {"number": number, "tenant_id": tenant["id"], "agent_id": agent["id"]}

        # 5. an update is a new version, and lands in KV too
        r = http.patch(
            f"/v1/agents/{agent['id']}",
            json={"first_message": "Hello from Acme!"},
            headers={**admin, "If-Match": r.headers.get("etag", '"1"')},
        )
        assert r.status_code == 200 and r.json()["version"] == 2, r.text
        assert asyncio.run(_kv_get(nats_url, "agents", subjects.agent_key(agent["id"])))["version"] == 2

        # 6. a console user logs in
        r = http.post(
            "/v1/users",
            json={"email": f"ops-{tenant['id'][:8]}@acme.example", "password": PASSWORD, "role": "admin"},
            headers=admin,
        )
        assert r.status_code == 201, r.text
        r = http.post("/v1/auth/login", json={"email": f"ops-{tenant['id'][:8]}@acme.example", "password": PASSWORD})
        assert r.status_code == 200, r.text
        console = {"Authorization": f"Bearer {r.json()['access_token']}"}

        # 7. someone calls the number (the call path records it; here we write what analytics writes)
        t0 = datetime.now(UTC) - timedelta(minutes=2)
        call_id = asyncio.run(
            insert_call(
                database_url,
                tenant_id=tenant["id"],
                agent_id=agent["id"],
                agent_version=2,
                to_number=number,
                started_at=t0,
                turns=[
                    {
                        "turn_id": "t0",
                        "speaker": "agent",
                        "text": "Hello from Acme!",
                        "started_at": t0,
                        "ended_at": t0 + timedelta(seconds=1),
                    },
                    {
                        "turn_id": "t1",
                        "speaker": "caller",
                        "text": "Can I book a cleaning?",
                        "started_at": t0 + timedelta(seconds=2),
                        "ended_at": t0 + timedelta(seconds=4),
                    },
                    {
                        "turn_id": "t1",
                        "speaker": "agent",
                        "text": "Of course. Which day?",
                        "started_at": t0 + timedelta(seconds=5),
                        "ended_at": t0 + timedelta(seconds=6),
                        "latency": {"stt_ms": 210.0, "voice_to_voice_ms": 790.0},
                    },
                ],
            )
        )

        # 8. and the call with its transcript reads back
        r = http.get("/v1/calls", params={"number": number}, headers=console)
        assert [c["id"] for c in r.json()["items"]] == [call_id], r.text
        r = http.get(f"/v1/calls/{call_id}", headers=console)
        assert r.status_code == 200, r.text
        call = r.json()
        assert call["agent_version"] == 2 and call["status"] == "ended"
        assert [t["text"] for t in call["turns"]] == [
            "Hello from Acme!",
            "Can I book a cleaning?",
            "Of course. Which day?",
        ]
        assert call["turns"][2]["latency_ms"] == 790.0

        # request metrics are labelled by route template, never by id
        metrics = http.get("/metrics").text
        assert 'route="/v1/agents/{agent_id}/deployment"' in metrics and agent["id"] not in metrics

        # the documentation is served
        assert http.get("/docs").status_code == 200
        assert http.get("/openapi.json").json()["info"]["title"] == "Voice platform control API"


def test_chunked_bodies_over_the_limit_are_refused_by_the_running_server(live_server: LiveServer) -> None:
    """Through uvicorn's real chunked framing (Transfer-Encoding: chunked, no Content-Length)."""
    with httpx.Client(base_url=live_server.url, timeout=10) as http:
        r = http.post("/v1/tenants", json={"name": "chunked"}, headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}"})
        assert r.status_code == 201, r.text
        auth = {"Authorization": f"Bearer {r.json()['admin_api_key']}", "Content-Type": "application/json"}

        def chunks() -> Iterator[bytes]:
            yield b'{"name": "big"'
            for _ in range(20):
                yield b" " * 65536
            yield b"}"

        r = http.post("/v1/agents", content=chunks(), headers=auth)
        assert r.request.headers.get("transfer-encoding") == "chunked"
        assert r.status_code == 413, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert http.get("/v1/agents", headers=auth).json()["items"] == []
