"""Where the streams live (pure logic): the deployment's replica count and AUDIO storage applied to the stream and
bucket definitions, what provisioning does with an existing stream that differs, the setting's validation, and
the configuration of a local cluster member."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from voice_devstack.stack import (
    Resolved,
    cluster_url,
    free_ports,
    nats_cluster,
    nats_config,
    nats_env,
    nats_note,
    resolve_nats,
)
from voice_runtime.bus import reconcile
from voice_runtime.settings import CommonSettings
from voice_schemas.streams import AUDIO, CALLS, DEAD_LETTERS, KV_HISTORY, Placement

pytestmark = pytest.mark.unit


def test_placement_sets_replicas_everywhere_and_storage_only_for_audio() -> None:
    p = Placement(replicas=3, audio_storage="memory")
    assert p.stream(CALLS).replicas == 3 and p.stream(CALLS).storage == "file"
    assert p.stream(DEAD_LETTERS).storage == "file"
    assert p.stream(AUDIO).replicas == 3 and p.stream(AUDIO).storage == "memory"
    assert p.bucket(KV_HISTORY).replicas == 3 and p.bucket(KV_HISTORY).storage == "file"
    assert Placement().stream(CALLS) == CALLS  # the default is the definition as written


@pytest.mark.parametrize("replicas", [0, 2, 4, 7])
def test_placement_refuses_replica_counts_without_a_quorum(replicas: int) -> None:
    with pytest.raises(ValueError, match="replicas"):
        Placement(replicas=replicas)


def test_the_setting_is_validated_at_start_up() -> None:
    assert CommonSettings(nats_replicas=3).placement() == Placement(replicas=3)
    assert CommonSettings().placement() == Placement()
    with pytest.raises(ValidationError, match="NATS_REPLICAS"):
        CommonSettings(nats_replicas=2)
    with pytest.raises(ValidationError):
        CommonSettings(nats_audio_storage="tape")


def test_replicas_are_raised_never_lowered() -> None:
    want = Placement(replicas=3).stream(CALLS)
    up = reconcile(want, replicas=1, storage="file")
    assert up.stream.replicas == 3 and up.raised_from == 1 and up.kept_replicas is None
    same = reconcile(want, replicas=3, storage="file")
    assert same.stream == want and same.raised_from is None and same.kept_replicas is None
    down = reconcile(Placement().stream(CALLS), replicas=3, storage="file")
    assert down.stream.replicas == 3 and down.kept_replicas == 3 and down.raised_from is None


def test_an_existing_streams_storage_is_kept() -> None:
    r = reconcile(Placement(audio_storage="file").stream(AUDIO), replicas=1, storage="memory")
    assert r.stream.storage == "memory" and r.kept_storage == "memory"
    assert reconcile(AUDIO, replicas=1, storage="file").kept_storage is None


def test_cluster_members_route_to_each_other(tmp_path: Path) -> None:
    nodes = nats_cluster(tmp_path, 3, ports=[4222, 4223, 4224], cluster_ports=[6222, 6223, 6224],
                         monitor_ports=[8222, 8223, 8224])
    assert [n.name for n in nodes] == ["n1", "n2", "n3"]
    assert nodes[0].routes == (6223, 6224) and nodes[2].routes == (6222, 6223)
    assert len({n.store for n in nodes}) == 3
    text = nats_config("n1", 4222, tmp_path / "n1", monitor_port=8222, cluster_port=6222, routes=(6223, 6224),
                       sync_interval="always")
    assert 'server_name: "n1"' in text and "listen: 127.0.0.1:4222" in text and "http: 127.0.0.1:8222" in text
    assert "listen: 127.0.0.1:6222" in text and "nats-route://127.0.0.1:6223" in text
    assert 'sync_interval: "always"' in text and str(tmp_path / "n1") in text
    single = nats_config("n1", 4222, tmp_path / "n1", monitor_port=8222)
    assert "cluster {" not in single and "sync_interval" not in single
    with pytest.raises(ValueError, match="NATS cluster"):
        nats_cluster(tmp_path, 2)


def test_picked_ports_never_repeat(tmp_path: Path) -> None:
    # a 3-node cluster once got the same port for a member's monitoring and route listeners (picked one by one, the
    # first socket closed before the second was bound) and that member never started
    assert len(set(free_ports(300))) == 300
    for _ in range(20):
        nodes = nats_cluster(tmp_path, 5)
        ports = [p for n in nodes for p in (n.port, n.monitor_port, n.cluster_port)]
        assert len(set(ports)) == 15


def test_make_run_starts_a_cluster_on_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIR", str(tmp_path))
    url, cmd, nodes = resolve_nats({"NATS_CLUSTER": "3"})
    assert cmd is None and len(nodes) == 3 and url == cluster_url(nodes) and url.count("nats://") == 3
    assert {n.store.parent for n in nodes} == {tmp_path / "nats-cluster"}
    r = Resolved(url, "postgresql://x", "http://llm", nats_nodes=nodes)
    assert r.nats_embedded and nats_env(r, {}) == {"NATS_REPLICAS": "3"}
    assert nats_env(r, {"NATS_REPLICAS": "1"}) == {}, "the user's own choice wins"
    assert "3-server cluster, streams at 3 replicas" in nats_note(r, {"NATS_REPLICAS": "3"})
    # a NATS the user names is used as it is
    assert resolve_nats({"NATS_URL": "nats://a:4222", "NATS_CLUSTER": "3"}) == ("nats://a:4222", None, [])
    assert nats_env(Resolved("nats://a:4222", "", ""), {}) == {}
    with pytest.raises(SystemExit, match="NATS_CLUSTER"):
        resolve_nats({"NATS_CLUSTER": "2"})
