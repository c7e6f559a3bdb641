"""Every service starts, reports ready, serves metrics and stops cleanly against real NATS."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from voice_devstack.stack import SERVICES

from .conftest import free_port

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("name,module", [(n, m) for n, m, _ in SERVICES])
def test_service_starts_ready_and_stops(name: str, module: str, nats_url: str, database_url: str) -> None:
    port = free_port()
    env = dict(os.environ, NATS_URL=nats_url, DATABASE_URL=database_url, HTTP_PORT=str(port),
               LOG_FORMAT="json", SHUTDOWN_GRACE_S="5")
    proc = subprocess.Popen([sys.executable, "-m", module], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
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
        m = httpx.get(f"http://127.0.0.1:{port}/metrics")
        assert m.status_code == 200 and "python_info" in m.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        out = proc.stdout.read() if proc.stdout else ""
        assert "service_stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
