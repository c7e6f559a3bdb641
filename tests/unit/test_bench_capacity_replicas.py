"""The capacity bench's ingress replicas: their names, and their loop-lag figures summed into one 'ingress'."""

from __future__ import annotations

from bench.capacity import ingress_names, merged_replicas


def lag(timers: int, late: int, p99: float | None) -> dict[str, object]:
    return {"timers": timers, "over_20ms": late, "p99_le_ms": p99, "nice": 0.0}


def test_names_of_one_and_three_replicas() -> None:
    assert ingress_names(1) == ("ingress",)
    assert ingress_names(3) == ("ingress", "ingress-2", "ingress-3")


def test_replicas_add_up_and_the_worst_p99_bound_is_kept() -> None:
    got = merged_replicas({"ingress": lag(1000, 3, 5.0), "ingress-2": lag(900, 7, 25.0), "media": lag(950, 1, 5.0)},
                          ("ingress", "ingress-2"))
    assert got["media"] == lag(950, 1, 5.0)
    assert got["ingress"] == {"timers": 1900, "over_20ms": 10, "p99_le_ms": 25.0, "nice": 0.0, "replicas": 2}
    assert "ingress-2" not in got


def test_an_unbounded_p99_wins_and_a_replica_without_figures_is_left_out() -> None:
    got = merged_replicas({"ingress": lag(10, 0, 5.0), "ingress-2": lag(10, 9, None)}, ("ingress", "ingress-2"))
    assert got["ingress"]["p99_le_ms"] is None and got["ingress"]["replicas"] == 2
    got = merged_replicas({"ingress-2": lag(10, 1, 5.0)}, ("ingress", "ingress-2"))
    assert got["ingress"]["replicas"] == 1 and got["ingress"]["timers"] == 10
    assert merged_replicas({"media": lag(1, 0, 5.0)}, ("ingress",)) == {"media": lag(1, 0, 5.0)}
