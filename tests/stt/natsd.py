"""A private JetStream server for a test package.

The stage services share durable consumers (``stt-utterances``, ``tts-replies``) on whatever server they
connect to, so on a shared server a test's message can be taken by another process's replica, or wait
behind a backlog other tests left. The stage tests therefore get a server of their own.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from voice_runtime import devstack


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def private_nats() -> Iterator[str]:
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="voice-stage-nats-") as store:
        proc = subprocess.Popen(devstack.nats_command(port, Path(store)), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            if not devstack.wait_port("127.0.0.1", port, 10):
                raise RuntimeError("private nats-server did not start")
            yield f"nats://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(10)
