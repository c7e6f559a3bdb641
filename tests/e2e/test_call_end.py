"""Every way a call ends reaches every service and the call record: status callback, agent hang-up,
a socket that dies."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from nats.js.errors import KeyNotFoundError, NoKeysError
from voice_runtime.bus import Bus
from voice_schemas import events, make

from bench.twilio_caller import TwilioCaller

from .conftest import PUBLIC, TWILIO_TOKEN, Platform, configure_agent, poll

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


async def ended_row(platform: Platform, call_id: str) -> asyncpg.Record | None:
    conn = await asyncpg.connect(platform.database_url)
    try:
        async def fetch():  # type: ignore[no-untyped-def]
            return await conn.fetchrow("SELECT * FROM calls WHERE id = $1 AND status = 'ended'", call_id)

        return await poll(fetch, 20)
    finally:
        await conn.close()


async def live_call(platform: Platform, bus: Bus, number: str) -> TwilioCaller:
    await configure_agent(bus, number)
    c = TwilioCaller(platform.ingress, auth_token=TWILIO_TOKEN, public_base_url=PUBLIC, to=number)
    await c.dial()
    await c.connect()
    assert await c.wait_for_audio(0, 30), "no greeting"
    return c


async def test_status_callback_ends_a_live_call(platform: Platform, platform_bus: Bus) -> None:
    c = await live_call(platform, platform_bus, "+15550401")
    assert await c.status_callback("completed") == 204
    assert await c.wait_closed(10), "ingress did not close the media stream"
    row = await ended_row(platform, c.call_id or "")
    assert row is not None and row["end_reason"] == "status_callback"
    # the call's state is gone from KV (the record and the provider-sid mapping)
    kv = await platform_bus.js.key_value("calls")
    try:
        keys = set(await kv.keys())
    except NoKeysError:
        keys = set()
    assert c.call_id not in keys and f"p.{c.call_sid}" not in keys
    history = await platform_bus.js.key_value("history")
    with pytest.raises(KeyNotFoundError):
        for _ in range(50):  # brain frees the conversation once the call has ended
            await history.get(c.call_id or "")
            await asyncio.sleep(0.1)


async def test_agent_hangup_after_playout(platform: Platform, platform_bus: Bus) -> None:
    c = await live_call(platform, platform_bus, "+15550402")
    assert c.call_id
    await platform_bus.publish(make(events.HangUp(after_playout=True), tenant_id="tenant-e2e", call_id=c.call_id))
    assert await c.wait_closed(15), "the agent's hang-up did not end the call"
    row = await ended_row(platform, c.call_id)
    assert row is not None and row["end_reason"] == "agent_hangup"


async def test_socket_dying_mid_call_ends_it(platform: Platform, platform_bus: Bus) -> None:
    c = await live_call(platform, platform_bus, "+15550403")
    await c.close()  # no `stop`: the TCP connection just goes away
    row = await ended_row(platform, c.call_id or "")
    assert row is not None and row["end_reason"] == "connection_lost"
    assert platform.procs["ingress"].poll() is None
