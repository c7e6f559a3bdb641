"""Real-time work first: `make run`'s process priorities and thread settings, and the event loop lag metric."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from voice_devstack import llm_models, priority
from voice_devstack.stack import SERVICES
from voice_runtime import metrics
from voice_runtime.realtime import report_priority, report_threads, watch_loop_lag
from voice_runtime.settings import CommonSettings

pytestmark = pytest.mark.unit

PRINT_NICE = [sys.executable, "-c", "import os; print(os.getpriority(os.PRIO_PROCESS, 0))"]


def test_model_processes_yield_to_real_time_ones_by_default() -> None:
    nice = {name: priority.nice_for(name, {}) for name, _, _ in SERVICES} | {"llm": priority.nice_for("llm", {})}
    assert nice == {"control-api": 0, "ingress": 0, "media": 0, "stt": 10, "brain": 10, "tts": 10, "analytics": 10,
                    "llm": 10}


def test_model_nice_is_one_setting_and_zero_turns_it_off() -> None:
    assert priority.nice_for("stt", {"MODEL_NICE": "5"}) == 5
    assert priority.nice_for("ingress", {"MODEL_NICE": "5"}) == 0
    assert all(priority.nice_for(n, {"MODEL_NICE": "0"}) == 0 for n in ("stt", "tts", "brain", "llm", "media"))
    cmd = [sys.executable, "-m", "voice_stt"]
    assert priority.niced(cmd, 0) == cmd  # off: the command line is the plain one
    for bad in ("-1", "20", "high", "1.5"):
        with pytest.raises(SystemExit, match="MODEL_NICE must be a whole number from 0 to 19"):
            priority.model_nice({"MODEL_NICE": bad})


def test_every_service_gets_one_blas_thread_unless_the_user_chose() -> None:
    assert priority.thread_env({}) == {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    assert "OMP_NUM_THREADS" not in priority.thread_env({"OMP_NUM_THREADS": "4"})


def test_llm_threads_override_the_profiles() -> None:
    fast = llm_models.PROFILES["fast"]
    assert priority.llm_threads(fast, {}) == fast
    cmd = llm_models.server_command(priority.llm_threads(fast, {"LLM_THREADS": "2", "LLM_THREADS_BATCH": "1"}), 9999,
                                    Path("m.gguf"))
    assert cmd[cmd.index("--n_threads") + 1] == "2" and cmd[cmd.index("--n_threads_batch") + 1] == "1"
    with pytest.raises(SystemExit, match="LLM_THREADS must be"):
        priority.llm_threads(fast, {"LLM_THREADS": "0"})


def test_the_wrapper_lowers_the_priority_of_what_it_runs() -> None:
    """A real process: started through `niced`, it runs at the nice value asked for (never a higher priority)."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    target = min(19, base + 3)
    out = subprocess.run(priority.niced(PRINT_NICE, target, own_session=False), capture_output=True, text=True,
                         check=True, timeout=60)
    assert int(out.stdout) == target
    # asked for less than the process already has: left as it is
    out = subprocess.run(priority.niced(PRINT_NICE, 1, own_session=False), capture_output=True, text=True,
                         check=True, timeout=60, preexec_fn=lambda: os.setpriority(os.PRIO_PROCESS, 0, target))
    assert int(out.stdout) == target


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="this kernel has no autogroups")
def test_own_session_lowers_the_sessions_scheduling_group_too() -> None:
    """As honcho starts it (a session of its own): the session's group is lowered, where nice alone would only rank
    the process within it."""
    read = [sys.executable, "-c", "print(open('/proc/self/autogroup').read())"]
    out = subprocess.run(priority.niced(read, 9), capture_output=True, text=True, check=True, timeout=60,
                         start_new_session=True)
    assert out.stdout.split()[-2:] == ["nice", "9"]


def test_the_wrapper_refuses_a_bad_command_line() -> None:
    for args in (["--nice", "5"], ["--nice", "25", "--", "true"], ["--nice", "x", "--", "true"]):
        r = subprocess.run([sys.executable, "-m", "voice_devstack.priority", *args], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 2 and "usage:" in r.stderr


def test_the_loop_lag_metric_sees_a_blocked_loop() -> None:
    """A loop blocked for 60 ms runs a 20 ms timer at least 40 ms late (a lower bound, whatever the machine)."""
    service = "lagtest"

    async def main() -> None:
        task = asyncio.create_task(watch_loop_lag(service, 0.02))
        await asyncio.sleep(0.05)  # the watcher is waiting on its timer
        time.sleep(0.06)  # blocking work on the loop, as a model run inline would be
        await asyncio.sleep(0.05)
        task.cancel()

    before = REGISTRY.get_sample_value("voice_event_loop_lag_seconds_count", {"service": service}) or 0.0
    asyncio.run(main())
    count = REGISTRY.get_sample_value("voice_event_loop_lag_seconds_count", {"service": service})
    assert count is not None and count > before
    worst = REGISTRY.get_sample_value("voice_event_loop_lag_max_seconds", {"service": service})
    assert worst is not None and worst >= 0.04
    over = REGISTRY.get_sample_value("voice_event_loop_lag_seconds_bucket", {"service": service, "le": "0.04"})
    assert over is not None and count - over >= 1  # the late run is counted above 40 ms


def test_services_report_their_priority_and_engine_threads() -> None:
    assert report_priority("nicetest") == os.getpriority(os.PRIO_PROCESS, 0)
    assert REGISTRY.get_sample_value("voice_process_nice", {"service": "nicetest"}) == os.getpriority(
        os.PRIO_PROCESS, 0)
    report_threads("tts", "piper", 1)
    assert REGISTRY.get_sample_value("voice_engine_threads", {"service": "tts", "engine": "piper"}) == 1
    assert metrics.LOOP_LAG_MAX._name == "voice_event_loop_lag_max_seconds"


def test_thread_defaults_suit_two_cores() -> None:
    from voice_media.engines.smart_turn import SmartTurnSettings
    from voice_stt.engines.moonshine import MoonshineSettings
    from voice_tts.engines.piper import PiperSettings

    assert PiperSettings().tts_threads == 1
    assert MoonshineSettings().moonshine_threads == 1
    assert SmartTurnSettings().turn_model_threads == 1
    assert CommonSettings().loop_lag_interval_ms == 20
    assert CommonSettings(loop_lag_interval_ms=0).loop_lag_interval_ms == 0  # off


def test_the_bench_reports_the_loop_lag_a_phase_met() -> None:
    """bench/looplag.py reads what a service exports (a real registry's text) before and after a phase."""
    from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

    from bench import looplag

    registry = CollectorRegistry()
    lag = Histogram(metrics.LOOP_LAG._name, "lag", ["service"], buckets=metrics.LOOP_LAG_BUCKETS, registry=registry)
    Gauge("voice_process_nice", "nice", ["service"], registry=registry).labels("stt").set(10)
    for v in (0.001, 0.003):
        lag.labels("stt").observe(v)
    before = {"stt": looplag.parse(generate_latest(registry).decode())}
    for v in [0.0005] * 97 + [0.03, 0.07, 0.3]:  # the phase: 100 timers, 3 more than a frame late
        lag.labels("stt").observe(v)
    after = {"stt": looplag.parse(generate_latest(registry).decode())}
    fig = looplag.figures(before, after)
    assert fig == {"stt": {"timers": 100, "over_20ms": 3, "p99_le_ms": 100.0, "nice": 10.0}}
    assert looplag.line(fig) == "event loop lag (20 ms timers): stt 3 of 100 over 20 ms late (p99 ≤ 100.0 ms, nice 10)"
    assert looplag.figures(after, after) == {}  # nothing ran: nothing said


def test_the_banner_says_what_make_run_chose() -> None:
    assert "analytics, brain, llm, stt, tts at nice 10" in priority.banner_line({})
    assert "MODEL_NICE=0" in priority.banner_line({"MODEL_NICE": "0"})
