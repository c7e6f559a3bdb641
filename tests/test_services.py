"""Every service starts, reports ready, serves the platform's metrics and stops cleanly against real NATS.

"Serves metrics" means the metrics the platform defines (``voice_runtime.metrics`` and the module-level metrics
of the service's own package), taken from the metric objects themselves, plus samples the service writes with
its own labels once it runs: the lag gauge of each durable consumer it declares, or (ingress, control-api, which
declare none) a counter of their own. ``python_info`` proves nothing: prometheus_client always exports it.
"""

from __future__ import annotations

import importlib
import inspect
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families
from voice_devstack.stack import SERVICES
from voice_runtime import metrics
from voice_runtime.service import Service

from .conftest import free_port
from .metric_defs import defined_metrics

pytestmark = pytest.mark.integration

Labels = dict[str, str]


def service_class(name: str, package: str) -> type[Service]:
    module = importlib.import_module(f"{package}.service")
    [cls] = [
        c
        for _, c in inspect.getmembers(module, inspect.isclass)
        if issubclass(c, Service) and c.__module__ == module.__name__ and c.name == name
    ]
    return cls


def sample_name(m: MetricWrapperBase) -> str:
    return m._name + "_total" if m._type == "counter" else m._name


def expected_samples(name: str, package: str) -> list[tuple[MetricWrapperBase, Labels]]:
    """Samples this service writes with its own labels soon after start."""
    durables = [h.consumer().durable for h in service_class(name, package).consumers()]
    expected: list[tuple[MetricWrapperBase, Labels]] = [
        (metrics.CONSUMER_PENDING, {"service": name, "consumer": d}) for d in durables
    ]
    # every service measures its event loop's lag and says its nice value (README "Real-time work first")
    expected += [(metrics.LOOP_LAG_MAX, {"service": name}), (metrics.PROCESS_NICE, {"service": name})]
    if name == "ingress":  # no durable consumer: its audio counters exist from import
        expected.append((metrics.AUDIO_FRAMES, {"service": name, "direction": "in", "outcome": "ok"}))
    if name == "control-api":  # no durable consumer: every request is counted, /healthz included
        from voice_control_api.middleware import REQUESTS

        expected.append((REQUESTS, {"method": "GET", "route": "/healthz", "status": "200"}))
    assert expected, f"{name}: nothing of its own to look for in /metrics"
    return expected


def missing(
    text: str, defined: Sequence[MetricWrapperBase], samples: Sequence[tuple[MetricWrapperBase, Labels]]
) -> list[str]:
    families = list(text_string_to_metric_families(text))
    exported = {(f.name, f.type) for f in families}
    out = [f"{m._name} ({m._type})" for m in defined if (m._name, m._type) not in exported]
    have = [(s.name, s.labels) for f in families for s in f.samples]
    for m, labels in samples:
        if not any(n == sample_name(m) and all(got.get(k) == v for k, v in labels.items()) for n, got in have):
            out.append(f"{sample_name(m)}{labels}")
    return out


@pytest.mark.unit
def test_missing_names_what_is_absent() -> None:
    """The check itself: python_info alone is not enough, a renamed family or an absent sample is reported."""
    text = '# HELP python_info x\n# TYPE python_info gauge\npython_info{implementation="CPython"} 1.0\n'
    assert missing(text, [metrics.ACTIVE_CALLS], []) == ["voice_active_calls (gauge)"]
    text += "# HELP voice_active_calls x\n# TYPE voice_active_calls gauge\n"
    assert missing(text, [metrics.ACTIVE_CALLS], []) == []
    wanted = [(metrics.ACTIVE_CALLS, {"service": "media"})]
    assert missing(text, [metrics.ACTIVE_CALLS], wanted) == ["voice_active_calls{'service': 'media'}"]
    text += 'voice_active_calls{service="stt"} 0.0\n'
    assert missing(text, [metrics.ACTIVE_CALLS], wanted) == ["voice_active_calls{'service': 'media'}"]
    text += 'voice_active_calls{service="media"} 0.0\n'
    assert missing(text, [metrics.ACTIVE_CALLS], wanted) == []


@pytest.mark.parametrize("name,module", [(n, m) for n, m, _ in SERVICES])
def test_service_starts_ready_and_stops(name: str, module: str, nats_url: str, database_url: str) -> None:
    defined = defined_metrics(module)
    samples = expected_samples(name, module)
    port = free_port()
    env = dict(
        os.environ,
        NATS_URL=nats_url,
        DATABASE_URL=database_url,
        HTTP_PORT=str(port),
        LOG_FORMAT="json",
        SHUTDOWN_GRACE_S="5",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", module], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 90
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                if r.status_code == 200 and r.json()["ready"]:
                    ready = True
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert ready, f"{name} did not become ready"
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        # it serves on uvloop (EVENT_LOOP's default), and stops cleanly on it below
        maps = Path(f"/proc/{proc.pid}/maps")
        assert not maps.exists() or "uvloop" in maps.read_text(), f"{name} does not run on uvloop"
        # the consumer lag gauges are first set by a task started with the consumer: poll, bounded
        deadline = time.monotonic() + 20
        while True:
            m = httpx.get(f"http://127.0.0.1:{port}/metrics")
            assert m.status_code == 200
            absent = missing(m.text, defined, samples)
            if not absent or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert absent == [], f"{name} does not export {absent}"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        out = proc.stdout.read() if proc.stdout else ""
        assert "service_stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
