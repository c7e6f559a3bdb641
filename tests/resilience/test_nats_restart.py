"""A single NATS server (file storage, as `make run` starts it) killed and started again mid-traffic: the services
reconnect by themselves, their durable consumers' pull loops go on, and nothing acknowledged is lost or doubled.

The server is killed with SIGKILL (no lame-duck mode, nothing flushed by the server): JetStream has written every
acknowledged message to its files, and the OS keeps those pages, so a process crash loses nothing even before the
next fsync (``sync_interval``; see the README's Durability).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from voice_devstack.stack import NatsNode, free_port, wait_healthy
from voice_runtime.bus import Bus, ProvisionError
from voice_schemas import events, make, subjects
from voice_schemas.streams import AUDIO, CALLS, KV_BUCKETS, Placement

from ..waiting import until
from .traffic import Publisher, check_nothing_lost, start_recorder

pytestmark = pytest.mark.integration


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsNode]:
    node = NatsNode("n1", free_port(), tmp_path / "n1", free_port())
    node.start()
    wait_healthy([node])
    yield node
    node.stop()


async def test_a_server_restart_loses_nothing_acknowledged(server: NatsNode) -> None:
    svc = await start_recorder(server.url)
    pub = Publisher(await Bus.connect(server.url, "resilience-publisher"))
    try:
        info = await pub.bus.js.stream_info(CALLS.name)
        assert info.config.storage == "file" and info.config.num_replicas == 1
        pub.start()
        await pub.acked_more(50)

        async def gone() -> bool:
            return not svc.nats.connected

        async def back() -> bool:
            return svc.nats.connected and pub.bus.connected

        server.kill()
        await until(gone, "the service to see the server gone", 10)
        await asyncio.sleep(0.5)  # publishes meanwhile wait and retry
        server.start()

        await until(back, "both to reconnect", 20)
        handled_before = svc.ids()
        await pub.acked_more(50)  # published after the restart, handled by the same pull loop
        await pub.stop()
        counts = await check_nothing_lost(svc, pub.bus, pub, handled_before)
        assert svc.nats.nc.stats["reconnects"] >= 1, counts
        assert svc.ready
    finally:
        await pub.stop()
        await svc.stop()
        await pub.bus.close()


async def test_replicas_above_one_are_refused_on_a_single_server(server: NatsNode) -> None:
    bus = await Bus.connect(server.url, "test", placement=Placement(replicas=3))
    try:
        with pytest.raises(ProvisionError, match="NATS_REPLICAS=3"):
            await bus.provision(wait_s=5)
    finally:
        await bus.close()


async def test_audio_storage_follows_the_setting_and_the_facts_stay_on_file(server: NatsNode) -> None:
    bus = await Bus.connect(server.url, "test", placement=Placement(audio_storage="memory"))
    try:
        await bus.provision()
        assert (await bus.js.stream_info(AUDIO.name)).config.storage == "memory"
        assert (await bus.js.stream_info(CALLS.name)).config.storage == "file"
        for b in KV_BUCKETS:  # as defined (file, but for short-lived liveness keys)
            assert (await bus.js.stream_info(f"KV_{b.bucket}")).config.storage == b.storage
        # an existing stream keeps its storage (NATS cannot change it): provisioning goes on
        back = await Bus.connect(server.url, "test")
        try:
            await back.provision()
            assert (await back.js.stream_info(AUDIO.name)).config.storage == "memory"
        finally:
            await back.close()
    finally:
        await bus.close()



async def test_a_publish_made_while_the_server_is_down_is_stored_once_it_is_back(server: NatsNode) -> None:
    bus = await Bus.connect(server.url, "test")
    try:
        await bus.provision()
        call_id = subjects.new_call_id()
        env = make(events.DtmfReceived(digit="5"), tenant_id="t", call_id=call_id)
        server.kill()
        publishing = asyncio.create_task(bus.publish(env))  # waits and tries again, same Nats-Msg-Id
        await asyncio.sleep(0.5)
        assert not publishing.done()
        server.start()
        ack = await publishing
        assert ack.stream == CALLS.name and not ack.duplicate
        again = await bus.publish(env)  # a retry that reaches the stream twice is stored once
        assert again.duplicate and again.seq == ack.seq
    finally:
        await bus.close()
