"""Services as real processes for the kill tests: started with their environment, ready when /readyz says so, and
stopped (or killed) by the test."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import httpx
from voice_devstack.stack import free_port


def start_service(module: str, logs: Path, name: str, timeout: float = 90.0, port: int | None = None,
                  **env: str) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m <module>`` with ``env`` on top of the test's environment; (process, its base URL) once ready.
    Its output goes to ``logs/<name>.log`` (appended: a replica started again on its port keeps its log)."""
    port = port or free_port()
    full = dict(os.environ, HTTP_PORT=str(port), LOG_FORMAT="json", SHUTDOWN_GRACE_S="2", PYTHONUNBUFFERED="1",
                **env)
    log_path = logs / f"{name}.log"
    log = open(log_path, "ab")
    proc = subprocess.Popen([sys.executable, "-m", module], env=full, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, log_path.read_text()[-3000:]
        time.sleep(0.1)
    raise AssertionError(f"{name} did not become ready")


def stop_all(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
