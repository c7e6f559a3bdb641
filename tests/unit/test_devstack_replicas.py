"""`make run STAGE_REPLICAS=n`: n processes of each stage on distinct ports, each brought back when it dies."""

from __future__ import annotations

import pytest
from voice_devstack.stack import SERVICES, STAGES, restarted, service_processes, stage_replicas

pytestmark = pytest.mark.unit


def test_one_replica_is_the_plain_stack() -> None:
    assert [(p, n, m, port) for p, n, m, port in service_processes(1)] == [(n, n, m, port) for n, m, port in SERVICES]


def test_stage_replicas_get_their_own_names_and_ports() -> None:
    procs = service_processes(2)
    ports = [port for *_, port in procs]
    assert len(ports) == len(set(ports))  # no two processes on one port
    names = [p for p, *_ in procs]
    for stage in STAGES:
        assert f"{stage}-1" in names and f"{stage}-2" in names and stage not in names
    for single in ("ingress", "control-api", "analytics"):  # holders of connections or singletons stay one
        assert names.count(single) == 1


@pytest.mark.parametrize("raw,ok", [("", 1), ("1", 1), ("2", 2), ("4", 4), ("0", None), ("5", None), ("x", None)])
def test_the_setting_is_checked(raw: str, ok: int | None) -> None:
    if ok is None:
        with pytest.raises(SystemExit, match="STAGE_REPLICAS"):
            stage_replicas({"STAGE_REPLICAS": raw})
    else:
        assert stage_replicas({"STAGE_REPLICAS": raw}) == ok


def test_a_replica_is_started_again_when_it_exits() -> None:
    line = restarted(["python", "-m", "voice_brain"])
    assert line.startswith("while :; do python -m voice_brain;") and "sleep 1" in line
