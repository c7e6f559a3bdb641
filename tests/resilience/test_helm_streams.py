"""The chart gives every service the deployment's stream placement: NATS_REPLICAS=1 by default, 3 with the
production values (whose bundled NATS is a 3-server cluster with file storage), and refuses a replica count the
NATS cluster cannot hold."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

CHECK_SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "check.py"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("helm_check", CHECK_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["helm_check"] = module
    spec.loader.exec_module(module)
    return module


def placement_env(check: ModuleType, values: dict[str, Any] | None) -> set[tuple[str, str]]:
    """(NATS_REPLICAS, NATS_AUDIO_STORAGE) of every Deployment."""
    out = set()
    for _, doc in check.documents(check.render(values)):
        if doc["kind"] != "Deployment":
            continue
        env = {e["name"]: e.get("value") for e in doc["spec"]["template"]["spec"]["containers"][0]["env"]}
        out.add((env["NATS_REPLICAS"], env["NATS_AUDIO_STORAGE"]))
    return out


def test_default_values_keep_one_copy(check: ModuleType) -> None:
    assert placement_env(check, None) == {("1", "file")}


def test_production_values_keep_three_copies_on_a_three_server_file_cluster(check: ModuleType) -> None:
    production = check.scenarios()["production"].values
    assert placement_env(check, production) == {("3", "file")}
    nats = production["nats"]["config"]
    assert nats["cluster"]["enabled"] and nats["cluster"]["replicas"] == 3
    assert nats["jetstream"]["fileStore"]["enabled"] and not nats["jetstream"]["memoryStore"]["enabled"]


def test_replicas_the_cluster_cannot_hold_are_refused(check: ModuleType) -> None:
    with pytest.raises(Exception, match=r"streams\.replicas: 1, 3 or 5"):
        check.render({"streams": {"replicas": 2}})
    with pytest.raises(Exception, match="at least 3 servers"):
        check.render({"streams": {"replicas": 3}, "nats": {"config": {"cluster": {"enabled": False}}}})
    with pytest.raises(Exception, match="at least 5 servers"):
        check.render({"streams": {"replicas": 5}})
    # an external NATS is the operator's to size
    external = {"nats": {"enabled": False}, "externalNats": {"url": "nats://nats.messaging.svc:4222"},
                "streams": {"replicas": 5, "audioStorage": "memory"}}
    assert placement_env(check, external) == {("5", "memory")}
