"""Three local NATS servers, clustered (the shape `make run` starts with NATS_CLUSTER=3 and the Helm production
values deploy), with every stream and bucket at three replicas: killing one server mid-traffic, a follower and
then the CALLS stream's leader, loses nothing acknowledged, and the consumer goes on handling events.

A publish is acknowledged once a majority of the stream's replicas has it, so the loss of any one server leaves
a copy of every acknowledged message on the two others; when the leader dies, the two elect a new one (the
publisher retries meanwhile with the same ``Nats-Msg-Id``, stored once).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from voice_devstack.stack import NatsNode, cluster_url, embedded_nats_cluster, wait_healthy
from voice_runtime.bus import Bus
from voice_schemas.streams import CALLS, KV_BUCKETS, STREAMS, Placement

from ..waiting import until
from .traffic import CONSUMER, Publisher, check_nothing_lost, start_recorder

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster() -> Iterator[list[NatsNode]]:
    with embedded_nats_cluster(3) as nodes:
        yield nodes


async def leader_of(bus: Bus, stream: str) -> str:
    async def known() -> str | None:
        try:
            info = await bus.js.stream_info(stream)
        except Exception:
            return None
        return info.cluster.leader if info.cluster else None

    leader: str = await until(known, f"a leader of {stream}", 30)
    return leader


async def replicas_of(bus: Bus, stream: str) -> int:
    info = await bus.js.stream_info(stream)
    assert info.cluster is not None
    return 1 + len(info.cluster.replicas or [])


async def test_streams_are_raised_to_three_replicas_and_never_lowered(cluster: list[NatsNode]) -> None:
    url = cluster_url(cluster)
    one = await Bus.connect(url, "test")  # provisioned first by a service with the default of 1
    three = await Bus.connect(url, "test", placement=Placement(replicas=3))
    try:
        await one.provision(consumers=(CONSUMER,))
        assert (await one.js.stream_info(CALLS.name)).config.num_replicas == 1
        await three.provision(consumers=(CONSUMER,))
        for s in STREAMS:
            assert (await three.js.stream_info(s.name)).config.num_replicas == 3, s.name
        for b in KV_BUCKETS:
            assert (await three.js.stream_info(f"KV_{b.bucket}")).config.num_replicas == 3, b.bucket

        async def consumer_replicated() -> bool:  # the durable consumer follows its stream
            info = await three.js.consumer_info(CALLS.name, CONSUMER.durable)
            return bool(info.cluster and len(info.cluster.replicas or []) == 2)

        await until(consumer_replicated, "the consumer at three replicas", 20)
        await one.provision(consumers=(CONSUMER,))  # a service still set to 1 does not strip the copies
        assert (await one.js.stream_info(CALLS.name)).config.num_replicas == 3
        assert (await one.js.stream_info("KV_history")).config.num_replicas == 3
    finally:
        await one.close()
        await three.close()


async def test_killing_a_follower_then_the_leader_loses_nothing(cluster: list[NatsNode]) -> None:
    url = cluster_url(cluster)
    svc = await start_recorder(url, replicas=3)
    pub = Publisher(await Bus.connect(url, "resilience-publisher", placement=Placement(replicas=3)))
    by_name = {n.name: n for n in cluster}
    try:
        assert await replicas_of(pub.bus, CALLS.name) == 3
        pub.start()
        await pub.acked_more(30)

        # a follower of the CALLS stream dies, and comes back
        leader = await leader_of(pub.bus, CALLS.name)
        follower = next(n for n in cluster if n.name != leader)
        follower.kill()
        await pub.acked_more(30)  # the two others are a majority: publishing goes on
        follower.start()
        wait_healthy(cluster)

        # the leader dies: the others elect a new one; this one stays down
        leader = await leader_of(pub.bus, CALLS.name)
        by_name[leader].kill()
        await asyncio.sleep(0.2)
        handled_before = svc.ids()
        await pub.acked_more(30, timeout=45)
        assert await leader_of(pub.bus, CALLS.name) != leader
        await pub.stop()
        await check_nothing_lost(svc, pub.bus, pub, handled_before)
        assert svc.ready and svc.nats.connected
    finally:
        await pub.stop()
        await svc.stop()
        await pub.bus.close()
