"""The Helm chart's WebRTC media block: pinned UDP ports (with hostPorts, the node's address advertised), the
optional Service, the NetworkPolicy rules and the ingress settings it derives. Rendered and validated offline with
``deploy/helm/check.py``, like the chart's other scenarios."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

CHECK_SCRIPT = Path(__file__).resolve().parents[1] / "deploy" / "helm" / "check.py"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("helm_check", CHECK_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["helm_check"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _render(check: ModuleType, webrtc: dict[str, Any], **extra: Any) -> list[dict[str, Any]]:
    values = {"webrtc": webrtc, "networkPolicy": {"egress": {"enabled": True}}, **extra}
    result = check.check_scenario(check.Scenario("webrtc", values))
    assert result.problems == []
    return [doc for _, doc in result.documents]


def _ingress(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [deployment] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-ingress")]
    return deployment["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def test_webrtc_media_ports_on_the_node_advertise_its_address(check: ModuleType) -> None:
    docs = _render(
        check,
        {"enabled": True, "udpPortStart": 41000, "udpPortCount": 3, "iceServers": "stun:stun.example.org:3478"},
        webrtcTurn={"credential": "turn-secret"},
    )
    container = _ingress(docs)
    ports = [p for p in container["ports"] if p["name"].startswith("webrtc-")]
    assert [(p["containerPort"], p.get("hostPort"), p["protocol"]) for p in ports] == [
        (41000, 41000, "UDP"),
        (41001, 41001, "UDP"),
        (41002, 41002, "UDP"),
    ]
    env = {e["name"]: e for e in container["env"]}
    assert env["WEBRTC_UDP_PORT_MIN"]["value"] == "41000" and env["WEBRTC_UDP_PORT_MAX"]["value"] == "41002"
    assert env["WEBRTC_ADVERTISED_ADDRESS"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert env["WEBRTC_ICE_SERVERS"]["value"] == "stun:stun.example.org:3478"
    assert env["WEBRTC_TURN_CREDENTIAL"]["valueFrom"]["secretKeyRef"]["key"] == "WEBRTC_TURN_CREDENTIAL"
    # browsers may send media to the ports; the pod may answer any address over UDP
    [policy] = [d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("-ingress")]
    udp_in = [p for rule in policy["spec"]["ingress"] for p in rule["ports"] if p["protocol"] == "UDP"]
    assert {"port": 41000, "endPort": 41002, "protocol": "UDP"} in udp_in
    assert {"ports": [{"protocol": "UDP"}]} in policy["spec"]["egress"]
    # no other service gets the settings or the TURN password
    for d in docs:
        if d["kind"] == "Deployment" and not d["metadata"]["name"].endswith("-ingress"):
            names = {e["name"] for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
            assert not any(n.startswith("WEBRTC_") for n in names), d["metadata"]["name"]


def test_webrtc_service_for_one_replica_behind_one_address(check: ModuleType) -> None:
    docs = _render(
        check,
        {
            "enabled": True,
            "udpPortCount": 2,
            "hostPorts": False,
            "advertisedAddress": "203.0.113.10",
            "sourceRanges": ["198.51.100.0/24"],
            "service": {"enabled": True, "loadBalancerIP": "203.0.113.10"},
        },
    )
    container = _ingress(docs)
    assert all("hostPort" not in p for p in container["ports"])
    env = {e["name"]: e for e in container["env"]}
    assert env["WEBRTC_ADVERTISED_ADDRESS"]["value"] == "203.0.113.10"
    [service] = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("-webrtc")]
    assert service["spec"]["type"] == "LoadBalancer" and service["spec"]["loadBalancerIP"] == "203.0.113.10"
    assert service["spec"]["loadBalancerSourceRanges"] == ["198.51.100.0/24"]
    assert [(p["port"], p["targetPort"], p["protocol"]) for p in service["spec"]["ports"]] == [
        (40000, "webrtc-0", "UDP"),
        (40001, "webrtc-1", "UDP"),
    ]


def test_without_webrtc_nothing_is_pinned(check: ModuleType) -> None:
    docs = _render(check, {"enabled": False})
    container = _ingress(docs)
    assert not [p for p in container["ports"] if p["name"].startswith("webrtc-")]
    assert not {e["name"] for e in container["env"]} & {"WEBRTC_UDP_PORT_MIN", "WEBRTC_ADVERTISED_ADDRESS"}
    assert not [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("-webrtc")]
