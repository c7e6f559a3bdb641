"""Fuzzed Twilio traffic at a running ingress while a real call goes on (bench/fuzz_ingress.py, small volume).

``python -m voice_ingress`` as a process on a NATS of the test's own, signatures checked. One caller speaks Twilio's
protocol (bench/twilio_caller.py) and an agent's audio is published for its call, while a few thousand generated
Media Streams messages and webhook bodies hit the same ingress over real connections; a third of those connections
first place a call of their own, so their garbage reaches a live session. Ingress must refuse each (403, 413, a
1008 close), log no error, and leave the real call as it was: its session up, every caller frame on the bus in
order, every agent frame played to the caller. ``make bench-fuzz`` runs the volume during a whole-platform call.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
from voice_devstack.stack import free_port
from voice_runtime.bus import Bus
from voice_schemas import subjects
from voice_schemas.audio import FRAME_BYTES, H_SEQ, AudioFrame

from bench.fuzz import log_errors
from bench.fuzz_ingress import Target, drive, generate, plan, script_strategy, webhook_strategy
from bench.twilio_caller import TwilioCaller

from ..e2e.conftest import configure_agent

pytestmark = pytest.mark.integration

MESSAGES = 3000
NUMBER, FUZZ_NUMBER = "+15550171", "+15550172"
TOKEN = "fuzz-test-auth-token-0123456789ab"
PUBLIC = "https://voice.example.test"
TURN_FRAMES = 25  # agent turns of 0.5 s


@dataclass
class Ingress:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def errors(self) -> list[str]:
        """Log lines at error level (by event), tracebacks and uncaught exceptions."""
        return sorted(log_errors(self.log.read_text(errors="replace")).elements())


@pytest.fixture
def bus(private_bus: Bus) -> Bus:
    return private_bus


@pytest.fixture
def ingress(private_nats_url: str, tmp_path: Path) -> Iterator[Ingress]:
    port = free_port()
    env = dict(os.environ, NATS_URL=private_nats_url, HTTP_PORT=str(port), TWILIO_AUTH_TOKEN=TOKEN,
               TWILIO_ALLOW_UNSIGNED="false", PUBLIC_BASE_URL=PUBLIC, LOG_FORMAT="json", SHUTDOWN_GRACE_S="2",
               PYTHONUNBUFFERED="1")
    log = tmp_path / "ingress.log"
    proc = subprocess.Popen([sys.executable, "-m", "voice_ingress"], env=env, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                break
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)
    yield Ingress(proc, url, log)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def agent_turn(turn: str, first_seq: int) -> list[AudioFrame]:
    t = np.arange(TURN_FRAMES * FRAME_BYTES // 2) / 16000
    pcm = (6000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16).tobytes()
    return [AudioFrame(pcm=pcm[i * FRAME_BYTES:(i + 1) * FRAME_BYTES], seq=first_seq + i, turn_id=turn, chunk=0,
                       last_in_chunk=i == TURN_FRAMES - 1, final=i == TURN_FRAMES - 1) for i in range(TURN_FRAMES)]


async def test_fuzzed_twilio_traffic_is_refused_and_a_live_call_goes_on(bus: Bus, ingress: Ingress) -> None:
    await configure_agent(bus, NUMBER, first_message="")
    await configure_agent(bus, FUZZ_NUMBER, first_message="")
    n_scripts, n_hooks = plan(MESSAGES)
    scripts = generate(script_strategy(), n_scripts, 7)  # before the call: generating blocks this loop
    hooks = generate(webhook_strategy(), n_hooks, 8)

    caller = TwilioCaller(ingress.url, auth_token=TOKEN, public_base_url=PUBLIC, to=NUMBER)
    call_id = await caller.dial()
    seqs: list[int] = []

    async def caller_frame(msg: Any) -> None:
        seqs.append(int((msg.headers or {}).get(H_SEQ, "0")))

    await bus.subscribe(subjects.audio_in(call_id), caller_frame)
    await caller.connect()
    while len(seqs) < 10:  # the call is up and its audio flows
        await asyncio.sleep(0.05)
    rss_before = psutil.Process(ingress.proc.pid).memory_info().rss

    published = 0
    fuzzing = True

    async def agent() -> None:  # what tts would publish for the call: back-to-back turns, paced in real time
        nonlocal published
        turn = 0
        while fuzzing:
            turn += 1
            for f in agent_turn(f"t{turn}", published + 1):
                await bus.publish_nowait(subjects.audio_out(call_id), f.pcm, f.headers())
                published += 1
                await asyncio.sleep(0.02)

    speaking = asyncio.create_task(agent())
    before_fuzz = len(seqs)
    target = Target(ingress.url, PUBLIC, TOKEN, bind_number=FUZZ_NUMBER)
    counts = await drive(target, scripts, hooks, concurrency=8)
    during_fuzz = len(seqs) - before_fuzz
    fuzzing = False
    await speaking
    deadline = time.monotonic() + 15
    while sum(len(r.payload) for r in caller.received) < published * 160 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)  # the caller's frames sent by now reach the bus

    # the fuzz reached ingress in volume, live sessions included, and was refused, never with a server error
    assert counts.messages >= MESSAGES * 0.8, counts.to_json()
    assert counts.bound_connections > 0 and counts.bound_frames > 0, counts.to_json()
    assert counts.http_status["403"] and counts.http_status["413"] and counts.ws_close["1008"], counts.to_json()
    assert counts.ws_close["refused 403"], counts.to_json()
    assert not [s for s in counts.http_status if s.startswith("5")], counts.to_json()
    # ingress did not crash and logged no error; its memory did not run away
    assert ingress.proc.poll() is None
    assert httpx.get(ingress.url + "/readyz", timeout=5).status_code == 200
    assert ingress.errors() == []
    assert psutil.Process(ingress.proc.pid).memory_info().rss < rss_before + 300 * 2**20
    # the real call went on: still connected, every caller frame on the bus in order, every agent frame played
    assert not caller.closed and caller.close_code is None
    assert during_fuzz > 0
    assert seqs == list(range(1, len(seqs) + 1))
    assert sum(len(r.payload) for r in caller.received) >= published * 160 - 160, (published, len(caller.received))
    await caller.hangup()
