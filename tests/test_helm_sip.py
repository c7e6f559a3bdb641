"""The Helm chart's SIP block: SIP over UDP and TCP and the RTP port range on the ingress pods and their Service,
the NetworkPolicy rules, and the ingress settings it derives. Rendered and validated offline with
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


def _render(check: ModuleType, sip: dict[str, Any]) -> list[dict[str, Any]]:
    result = check.check_scenario(check.Scenario("sip", {"sip": sip}))
    assert result.problems == []
    return [doc for _, doc in result.documents]


def _ingress(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [deployment] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-ingress")]
    return deployment["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def test_sip_udp_tcp_and_rtp_ports_reach_ingress_with_its_settings(check: ModuleType) -> None:
    docs = _render(check, {"enabled": True, "rtpPortStart": 30000, "rtpPortCount": 3, "maxCallsPerReplica": 10,
                           "allowedSources": ["203.0.113.0/24", "198.51.100.7"], "defaultCountryPrefix": "+1",
                           "service": {"loadBalancerIP": "192.0.2.50"}})
    container = _ingress(docs)
    ports = {(p["name"], p["containerPort"], p["protocol"]) for p in container["ports"]}
    assert {("sip", 5060, "UDP"), ("sip-tcp", 5060, "TCP"), ("rtp-0", 30000, "UDP"), ("rtp-2", 30002, "UDP")} <= ports
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SIP_ENABLED"] == "true" and env["SIP_UDP_PORT"] == "5060" and env["SIP_TCP_PORT"] == "5060"
    assert env["SIP_TCP_ENABLED"] == "true"
    assert (env["SIP_RTP_PORT_MIN"], env["SIP_RTP_PORT_MAX"]) == ("30000", "30002")
    assert env["SIP_ADVERTISED_ADDRESS"] == "192.0.2.50"  # the load balancer's address goes into SDP and Contact
    assert env["SIP_ALLOWED_SOURCES"] == "203.0.113.0/24,198.51.100.7"
    assert env["SIP_DEFAULT_COUNTRY_PREFIX"] == "+1" and env["SIP_MAX_CALLS"] == "3"  # no more calls than ports
    [svc] = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("-sip")]
    assert {(p["name"], p["port"], p["protocol"]) for p in svc["spec"]["ports"]} == {
        ("sip", 5060, "UDP"), ("sip-tcp", 5060, "TCP"), ("rtp-0", 30000, "UDP"), ("rtp-1", 30001, "UDP"),
        ("rtp-2", 30002, "UDP")}
    [policy] = [d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("-ingress")]
    allowed = [p for rule in policy["spec"]["ingress"] for p in rule.get("ports", [])]
    assert {"port": 5060, "protocol": "TCP"} in allowed
    assert {"port": 30000, "endPort": 30002, "protocol": "UDP"} in allowed
    for d in docs:  # no other service gets SIP settings
        if d["kind"] == "Deployment" and not d["metadata"]["name"].endswith("-ingress"):
            names = {e["name"] for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
            assert not any(n.startswith("SIP_") for n in names), d["metadata"]["name"]


def test_sip_over_udp_only_and_off_by_default(check: ModuleType) -> None:
    docs = _render(check, {"enabled": True, "tcp": False})
    container = _ingress(docs)
    assert not [p for p in container["ports"] if p["protocol"] == "TCP" and p["name"].startswith("sip")]
    assert {e["name"]: e.get("value") for e in container["env"]}["SIP_TCP_ENABLED"] == "false"
    docs = _render(check, {"enabled": False})
    assert not [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("-sip")]
    assert not any(e["name"].startswith("SIP_") for e in _ingress(docs)["env"])
