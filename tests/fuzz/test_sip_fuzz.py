"""Fuzzed SIP at a running ingress's SIP port while a real SIP call goes on (bench/fuzz_sip.py, small volume).

``python -m voice_ingress`` as a process with SIP on, on a NATS of the test's own. A real caller (a UAC with its own
RTP end, tests/e2e/sip_caller.py) holds a call whose agent audio the test publishes, while a few thousand generated
SIP messages — garbage, truncated and mutated requests, wrong Content-Lengths, bad headers and SDP, floods from
many source addresses, INVITEs to unknown numbers, TCP streams that lie about their length, dialogs hit with
in-dialog junk and RTP noise — reach the same ports. Ingress must answer with refusals (never a 500), log no error,
keep its memory bounded, and leave the real call as it was: its dialog up (BYE gets 200), the caller's audio on the
bus in order, every agent frame played to the caller. ``make bench-fuzz-sip`` runs the volume (100,000) with the
whole platform answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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
from voice_ingress import g711
from voice_runtime.bus import Bus
from voice_schemas import events, parse, subjects
from voice_schemas.audio import FRAME_BYTES, H_SEQ, AudioFrame

from bench.fuzz import log_errors
from bench.fuzz_sip import Peer, drive
from bench.sip_caller import SipCaller

from ..e2e.conftest import configure_agent

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

MESSAGES = 3000
NUMBER, FUZZ_NUMBER = "+15550181", "+15550182"
TURN_FRAMES = 25  # agent turns of 0.5 s


@dataclass
class Ingress:
    proc: subprocess.Popen[bytes]
    url: str
    sip_port: int
    log: Path

    def errors(self) -> list[str]:
        """Log lines at error level (by event), tracebacks and uncaught exceptions."""
        return sorted(log_errors(self.log.read_text(errors="replace")).elements())


@pytest.fixture
def bus(private_bus: Bus) -> Bus:
    return private_bus


@pytest.fixture
def ingress(private_nats_url: str, tmp_path: Path) -> Iterator[Ingress]:
    port, sip_port = free_port(), free_port()
    env = dict(os.environ, NATS_URL=private_nats_url, HTTP_PORT=str(port), LOG_FORMAT="json", SHUTDOWN_GRACE_S="2",
               PYTHONUNBUFFERED="1", SIP_ENABLED="true", SIP_BIND_HOST="127.0.0.1", SIP_UDP_PORT=str(sip_port),
               SIP_TCP_PORT=str(sip_port), SIP_T1_MS="100", SIP_T2_MS="400")
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
    yield Ingress(proc, url, sip_port, log)
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


def loud_packets(caller: SipCaller) -> int:
    return sum(1 for _, p in caller.received if np.abs(g711.decode(p, "ulaw")).mean() > 1000)


async def test_fuzzed_sip_is_refused_and_a_live_sip_call_goes_on(bus: Bus, ingress: Ingress) -> None:
    await configure_agent(bus, NUMBER, first_message="")
    await configure_agent(bus, FUZZ_NUMBER, first_message="")
    started: list[events.CallStarted] = []
    call_ids: list[str] = []

    async def on_started(msg: Any) -> None:
        env = parse(msg.data)
        if env.data.to_number == NUMBER:
            call_ids.append(env.call_id)
        started.append(env.data)

    await bus.subscribe(events.CallStarted.subject_pattern(), on_started)
    caller = SipCaller("127.0.0.1", ingress.sip_port, NUMBER)
    final = await caller.dial()
    assert final.code == 200, f"{final.code} {final.phrase}"
    deadline = time.monotonic() + 10
    while not call_ids and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    [call_id] = call_ids
    seqs: list[int] = []

    async def caller_frame(msg: Any) -> None:
        seqs.append(int((msg.headers or {}).get(H_SEQ, "0")))

    await bus.subscribe(subjects.audio_in(call_id), caller_frame)
    while len(seqs) < 10:  # the call is up and the caller's audio flows
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
    peer = Peer("127.0.0.1", ingress.sip_port, ingress.sip_port, bind_number=FUZZ_NUMBER)
    counts = await drive(peer, MESSAGES, seed_value=11, sources=32, concurrency=8, rate=400, max_dialogs=3)
    during_fuzz = len(seqs) - before_fuzz
    fuzzing = False
    await speaking
    deadline = time.monotonic() + 15
    while loud_packets(caller) < published - 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    summary = json.dumps(counts.to_json())

    # the fuzz reached ingress in volume, over UDP, TCP and live dialogs, and was refused, never with a server error
    assert counts.messages >= MESSAGES, summary
    assert counts.tcp_connections > 0 and counts.dialogs_answered > 0 and counts.rtp_packets > 0, summary
    assert counts.responses["400"] and counts.responses["404"] and counts.responses["481"], summary
    assert counts.responses["488"] or counts.responses["400"], summary
    assert counts.tcp_endings["closed by ingress"] > 0, summary
    # (a 500 only as RFC 3261 12.2.2 asks: an in-dialog CSeq that went backwards, with Retry-After)
    assert not [c for c in counts.responses if c.startswith("5") and c not in ("503", "500 cseq-out-of-order")], \
        summary
    assert not counts.client_errors or set(counts.client_errors) <= {"OSError:90"}, summary  # 90: over 64 KiB
    # ingress did not crash and logged no error; its memory did not run away
    assert ingress.proc.poll() is None
    assert httpx.get(ingress.url + "/readyz", timeout=5).status_code == 200
    assert ingress.errors() == []
    assert psutil.Process(ingress.proc.pid).memory_info().rss < rss_before + 300 * 2**20
    # the real call went on: the caller's audio on the bus in order, every agent frame played, its dialog up
    assert during_fuzz > 0 and seqs == list(range(1, len(seqs) + 1))
    assert loud_packets(caller) >= published - 2, (published, loud_packets(caller))
    assert await caller.hangup() == 200
    # the fuzz placed calls only on the number its dialogs call (none for the unknown numbers)
    assert {s.to_number for s in started} <= {NUMBER, FUZZ_NUMBER}
