"""What JetStream's fsync policy costs on this machine (not a test).

    .venv/bin/python -m bench.nats_durability [--events 1000] [--concurrent 2000] [--frames 5000]

For each configuration — one server or a local 3-server cluster (R3 streams), each with the server's default
``sync_interval`` (fsync every 2 minutes) and with ``sync_interval: always`` (fsync before every ack) — on fresh
servers started here (the embedded binary, own stores under /tmp):

- events, one at a time: a ~600 B JSON envelope published to a file stream with ``Nats-Msg-Id``, waiting for each
  ack (what a stage does when it publishes a durable fact): publish-ack latency p50/p95 and msgs/s;
- events, 16 in flight: the same with 16 publishers (several calls at once): msgs/s and latency;
- audio: 640 B frames (20 ms of PCM16) core-published as the ingress does (no ack) into a file stream: frames/s
  stored. ``sync_interval`` is server-wide, so it applies to the audio stream as much as to the facts.

Writes bench/results/latest-nats-durability.{json,md}. Other work on the machine skews every figure: the report
records the load average and CPU use around the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import psutil
from nats.js import api as jsapi
from voice_devstack.stack import NatsNode, cluster_url, embedded_nats_cluster

from .machine import cpu_model
from .stats import summary

RESULTS = Path(__file__).resolve().parent / "results"
EVENT_BYTES = 600
FRAME_BYTES = 640
IN_FLIGHT = 16
CONFIGS: tuple[tuple[str, int, str | None], ...] = (
    # (name, servers, sync_interval); None = the server's default (2 minutes)
    ("one server, default sync", 1, None),
    ("one server, sync always", 1, "always"),
    ("3-server cluster R3, default sync", 3, None),
    ("3-server cluster R3, sync always", 3, "always"),
)


def _event(n: int) -> bytes:
    body = {"id": uuid.uuid4().hex, "type": "bench.event", "seq": n}
    pad = EVENT_BYTES - len(json.dumps(body)) - 12
    return json.dumps({**body, "pad": "x" * max(0, pad)}).encode()


async def _events(js: Any, subject: str, n: int, workers: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(n))

    async def worker() -> None:
        nonlocal errors
        for i in counter:
            data = _event(i)
            t0 = time.perf_counter()
            try:
                await js.publish(subject, data, headers={"Nats-Msg-Id": uuid.uuid4().hex}, timeout=10)
            except Exception:
                errors += 1
                continue
            latencies.append((time.perf_counter() - t0) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    elapsed = time.perf_counter() - started
    return {"n": n, "in_flight": workers, "errors": errors, "msgs_per_s": round(len(latencies) / elapsed, 1),
            "ack_ms": summary(latencies, ndigits=2)}


async def _audio(nc: Any, js: Any, stream: str, subject: str, n: int) -> dict[str, Any]:
    frame = b"\x00" * FRAME_BYTES
    before = (await js.stream_info(stream)).state.messages
    started = time.perf_counter()
    for i in range(n):
        await nc.publish(subject, frame, headers={"seq": str(i)})
    await nc.flush()
    deadline = time.monotonic() + 120
    stored = 0
    while time.monotonic() < deadline:
        stored = (await js.stream_info(stream)).state.messages - before
        if stored >= n:
            break
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    return {"n": n, "stored": stored, "frames_per_s": round(stored / elapsed, 1)}


async def _run_config(url: str, replicas: int, events: int, concurrent: int, frames: int) -> dict[str, Any]:
    nc = await nats.connect(servers=url.split(","), name="bench-durability")
    js = nc.jetstream(timeout=10)
    try:
        await js.add_stream(jsapi.StreamConfig(name="BENCH_EVENTS", subjects=["bench.events.>"],
                                               storage=jsapi.StorageType.FILE, num_replicas=replicas,
                                               duplicate_window=120))
        await js.add_stream(jsapi.StreamConfig(name="BENCH_AUDIO", subjects=["bench.audio.>"],
                                               storage=jsapi.StorageType.FILE, num_replicas=replicas,
                                               duplicate_window=10))
        await _events(js, "bench.events.warmup", 50, 1)
        one = await _events(js, "bench.events.one", events, 1)
        many = await _events(js, "bench.events.many", concurrent, IN_FLIGHT)
        audio = await _audio(nc, js, "BENCH_AUDIO", "bench.audio.frames", frames)
        return {"events_one_at_a_time": one, "events_in_flight": many, "audio": audio}
    finally:
        await nc.close()


def _servers_cpu_s(nodes: list[NatsNode]) -> float:
    """User + system CPU seconds the servers used so far."""
    return sum(sum(psutil.Process(n.proc.pid).cpu_times()[:2]) for n in nodes if n.proc is not None)


def run(events: int, concurrent: int, frames: int) -> dict[str, Any]:
    proc = psutil.Process()
    psutil.cpu_percent(None)
    load_before = os.getloadavg()
    results = []
    for name, servers, sync in CONFIGS:
        with embedded_nats_cluster(servers, sync_interval=sync) as nodes:
            cpu_t0 = _servers_cpu_s(nodes)
            t0 = time.perf_counter()
            r = asyncio.run(_run_config(cluster_url(nodes), servers, events, concurrent, frames))
            wall = time.perf_counter() - t0
            cpu_s = _servers_cpu_s(nodes) - cpu_t0
        results.append({"config": name, "servers": servers, "replicas": servers, "sync_interval": sync or "2m",
                        "wall_s": round(wall, 1), "servers_cpu_s": round(cpu_s, 1), **r})
        print(f"{name}: {json.dumps(r)}", flush=True)
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "load_avg_before": [round(x, 2) for x in load_before],
                    "load_avg_after": [round(x, 2) for x in os.getloadavg()],
                    "machine_cpu_percent_during": psutil.cpu_percent(None),
                    "bench_process_cpu_s": round(sum(proc.cpu_times()[:2]), 1)},
        "sizes": {"events_one_at_a_time": events, "events_in_flight": concurrent, "in_flight": IN_FLIGHT,
                  "audio_frames": frames, "event_bytes": EVENT_BYTES, "frame_bytes": FRAME_BYTES},
        "results": results,
    }


def markdown(report: dict[str, Any]) -> str:
    m, s = report["machine"], report["sizes"]
    lines = [
        "# NATS durability: what fsync costs", "",
        f"{report['generated_at']}, {m['cpu']} ({m['cores']} cores); load average "
        f"{m['load_avg_before'][0]} before, {m['load_avg_after'][0]} after; whole-machine CPU "
        f"{m['machine_cpu_percent_during']}% during the run (other work included).", "",
        f"Events: {s['event_bytes']} B JSON with Nats-Msg-Id, one at a time (n={s['events_one_at_a_time']}) and "
        f"{s['in_flight']} in flight (n={s['events_in_flight']}); audio: {s['audio_frames']} core-published "
        f"{s['frame_bytes']} B frames into a file stream.", "",
        "| configuration | events one at a time: msgs/s | ack p50 / p95 ms | "
        f"{s['in_flight']} in flight: msgs/s | ack p50 / p95 ms | audio frames/s stored |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        one, many, audio = r["events_one_at_a_time"], r["events_in_flight"], r["audio"]
        lines.append(
            f"| {r['config']} | {one['msgs_per_s']} | {one['ack_ms']['p50']} / {one['ack_ms']['p95']} | "
            f"{many['msgs_per_s']} | {many['ack_ms']['p50']} / {many['ack_ms']['p95']} | {audio['frames_per_s']} |"
        )
    errors = sum(r["events_one_at_a_time"]["errors"] + r["events_in_flight"]["errors"] for r in report["results"])
    lines += ["", f"Publish errors: {errors}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=1000, help="events published one at a time, per configuration")
    ap.add_argument("--concurrent", type=int, default=2000, help=f"events published {IN_FLIGHT} in flight")
    ap.add_argument("--frames", type=int, default=5000, help="audio frames core-published")
    a = ap.parse_args()
    report = run(a.events, a.concurrent, a.frames)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest-nats-durability.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "latest-nats-durability.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
