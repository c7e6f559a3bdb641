"""`make bench-capacity` in miniature: its own stack with the stand-ins, one step of four calls, one question each.

Checks that the calls are held end to end (greeting, question, reply through ingress, media, the stand-ins and
back) and that the report has its fields; never a timing figure.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bench.capacity import run

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


async def test_capacity_bench_holds_calls_spread_over_two_ingress_replicas_with_caller_frames_two_a_message(
        tmp_path: Path) -> None:
    """One step of four calls with ``--ingress-procs 2``: two ingress processes on the one bus, as the Helm chart's two
    replicas; the calls go to them in turn, each replica's calls are answered through media and the stand-ins, and
    the report sums the replicas' CPU and loop lag as 'ingress' while saying how the calls were spread. Both replicas
    batch caller frames as a loaded ingress does (``CALLER_FRAMES_PER_MESSAGE`` from ``CALLER_FRAMES_FROM_CALLS``=0:
    from the first call): media still hears each question through the real bus. The report's files and fields are
    checked on the same run (one stack: each costs ~35 s to start on two cores, and the suite is near its 20 min)."""
    rep = await asyncio.to_thread(run, ["--steps", "4", "--turns", "1", "--stagger-s", "0.5", "--out",
                                        str(tmp_path), "--ingress-procs", "2", "--set", "CALLER_FRAMES_FROM_CALLS=0"])
    saved = json.loads((tmp_path / "latest-capacity.json").read_text())
    assert saved["steps"] == json.loads(json.dumps(rep["steps"], default=str))
    markdown = (tmp_path / "latest-capacity.md").read_text()
    assert "Knee" in markdown and "2 processes" in markdown
    (step,) = rep["steps"]
    assert step["calls"] == 4 and step["calls_ok"] == 4, step["errors"]
    assert step["turns"] == 4 and step["turns_answered"] == 4
    assert step["agent_frames"] > 200 and step["odd_sized_frames"] == 0
    assert step["jitter_ms"]["n"] > 0 and step["jitter_ms"]["p50"] is not None
    assert step["lateness_ms"]["n"] == step["jitter_ms"]["n"] and step["lateness_ms"]["p99"] is not None
    for service in ("ingress", "media"):  # their event loops' 20 ms timers over the step, from /metrics
        lag = step["loop_lag"][service]
        assert lag is not None and lag["timers"] > 0 and 0 <= lag["over_20ms"] <= lag["timers"], lag
    for key in ("late_pct", "underruns", "call_seconds", "machine_cpu_pct_all_cores", "verdict"):
        assert key in step
    assert {"ingress", "media", "nats-server", "standins", "caller"} <= set(step["processes"])
    for figures in step["processes"].values():
        assert figures["cpu_pct"] is not None and figures["cpu_us_per_call_frame"] is not None
    assert step["platform"]["cpu_us_per_call_frame"] is not None and step["processes_died"] == []
    knee = rep["knee"]
    assert knee["first_bad_calls"] in (None, 4) and knee["reason"]
    assert knee["last_good_calls"] == (0 if knee["first_bad_calls"] else 4)
    # two replicas, the calls in turn, reported as one 'ingress'
    assert rep["config"]["settings"] == {"CALLER_FRAMES_FROM_CALLS": "0"}
    assert step["ingress_procs"] == 2 and rep["config"]["ingress_procs"] == 2
    replicas = step["ingress_replicas"]
    assert set(replicas) == {"ingress", "ingress-2"}
    assert [replicas[n]["calls"] for n in ("ingress", "ingress-2")] == [2, 2], replicas
    assert step["loop_lag"]["ingress"]["replicas"] == 2 and "ingress-2" not in step["loop_lag"]
    assert "ingress-2" not in step["processes"] and step["processes"]["ingress"]["cpu_pct"] is not None
