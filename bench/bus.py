"""Bus overhead: one NATS hop, publish → receive, for audio frames and for durable events, under load.

- audio: core publishes of 640 B (20 ms PCM16 at 16 kHz) with seq/epoch/timestamp headers, 50 per
  second per stream, N streams with their own phases (N = 2 x calls: one per direction);
- durable events: JetStream publish (waits for the ack) of a ~600 B JSON envelope with Nats-Msg-Id, read
  by durable pull consumers with explicit ack: one fetching one message at a time, one fetching like the
  platform's consumers do (``fetch(batch=8, timeout=1.0)``).

The load is published by a separate process so the receiving side measures the bus, not its own
publisher; both sides stamp with CLOCK_MONOTONIC, which is shared by processes on one machine. The
bench's own subjects (``bench.<run>.>``) and its own stream (``BENCH_<run>``, deleted afterwards) are used;
nothing of the platform's is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import nats
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import api as jsapi

from .stats import summary

FRAME_BYTES = 640
EVENT_BYTES = 600


@dataclass
class BusPhase:
    name: str
    audio_streams: int
    events_per_s: float
    seconds: float


def main() -> None:
    """The load publisher, run as a child process: ``python -m bench.bus '<json args>'``; prints a JSON result."""
    a = json.loads(sys.argv[1])
    print(json.dumps(asyncio.run(_publish(a["url"], a["run"], a["phase"], int(a["start_at_ns"])))), flush=True)


async def _publish(url: str, run: str, phase: dict[str, Any], start_at_ns: int) -> dict[str, Any]:
    nc = await nats.connect(url, name="bench-bus-pub")
    js = nc.jetstream(timeout=5.0)
    payload = b"\x00" * FRAME_BYTES
    body = json.dumps({"type": "bench.event", "pad": "x" * (EVENT_BYTES - 40)}).encode()
    seconds = float(phase["seconds"])
    streams = int(phase["audio_streams"])
    rate = float(phase["events_per_s"])
    acks: list[float] = []
    sent = {"audio": 0, "events": 0, "event_errors": 0}
    await asyncio.sleep(max(0.0, (start_at_ns - time.monotonic_ns()) / 1e9))
    t0 = time.monotonic()

    async def audio_stream(k: int) -> None:
        subject = f"bench.{run}.audio.{k}"
        phase_s = (k / max(1, streams)) * 0.02
        n = 0
        while True:
            due = t0 + phase_s + n * 0.02
            if due - t0 > seconds:
                return
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            n += 1
            await nc.publish(subject, payload, headers={
                "seq": str(n), "epoch": "0", "ts": str(time.monotonic_ns())})
            sent["audio"] += 1

    async def events(k: int, workers: int) -> None:
        per_worker = rate / workers
        n = 0
        while True:
            due = t0 + (n + k / workers) / per_worker
            if due - t0 > seconds:
                return
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            n += 1
            ts = time.monotonic_ns()
            try:
                await js.publish(f"bench.{run}.js.{k}", body, headers={
                    "Nats-Msg-Id": uuid.uuid4().hex, "ts": str(ts)})
                acks.append((time.monotonic_ns() - ts) / 1e6)
                sent["events"] += 1
            except Exception:
                sent["event_errors"] += 1

    workers = max(1, min(8, int(rate // 50) + 1)) if rate > 0 else 0
    await asyncio.gather(*(audio_stream(k) for k in range(streams)), *(events(k, workers) for k in range(workers)))
    await nc.flush()
    await nc.close()
    return {"sent": sent, "ack_ms": acks}


async def run_phase(url: str, phase: BusPhase) -> dict[str, Any]:
    run = uuid.uuid4().hex[:12]
    stream = f"BENCH_{run}"
    nc = await nats.connect(url, name="bench-bus-sub")
    js = nc.jetstream(timeout=10.0)
    audio_lat: list[float] = []
    seen_seq: dict[str, int] = {}
    gaps = 0
    out: dict[str, Any] = {"phase": phase.name, "audio_streams": phase.audio_streams,
                           "audio_msgs_per_s": phase.audio_streams * 50, "events_per_s": phase.events_per_s,
                           "seconds": phase.seconds}

    async def on_audio(msg: Any) -> None:
        nonlocal gaps
        now = time.monotonic_ns()
        h = msg.headers or {}
        audio_lat.append((now - int(h.get("ts", now))) / 1e6)
        seq = int(h.get("seq", 0))
        last = seen_seq.get(msg.subject, 0)
        if seq != last + 1:
            gaps += 1
        seen_seq[msg.subject] = seq

    try:
        await js.add_stream(jsapi.StreamConfig(
            name=stream, subjects=[f"bench.{run}.js.>"], storage=jsapi.StorageType.FILE,
            retention=jsapi.RetentionPolicy.LIMITS, max_age=600, duplicate_window=120, num_replicas=1))
        consumers: dict[str, list[float]] = {"fetch_1": [], "fetch_8_timeout_1s": []}
        for name in consumers:
            await js.add_consumer(stream, jsapi.ConsumerConfig(
                durable_name=name, ack_policy=jsapi.AckPolicy.EXPLICIT, ack_wait=30, max_deliver=3,
                deliver_policy=jsapi.DeliverPolicy.NEW, max_ack_pending=10_000))
        await nc.subscribe(f"bench.{run}.audio.*", cb=on_audio)
        await nc.flush()
        stop = asyncio.Event()

        async def pull(name: str, batch: int, timeout: float) -> None:
            sub = await js.pull_subscribe_bind(durable=name, stream=stream)
            lat = consumers[name]
            while not stop.is_set():
                try:
                    msgs = await sub.fetch(batch=batch, timeout=timeout)
                except (TimeoutError, NatsTimeoutError):
                    continue
                except Exception:
                    if stop.is_set():
                        return
                    raise
                now = time.monotonic_ns()
                for m in msgs:
                    h = m.headers or {}
                    lat.append((now - int(h.get("ts", now))) / 1e6)
                    await m.ack()

        pullers = [asyncio.create_task(pull("fetch_1", 1, 1.0)),
                   asyncio.create_task(pull("fetch_8_timeout_1s", 8, 1.0))]
        start_at = time.monotonic_ns() + int(3e9)  # let the child import and connect first
        args = {"url": url, "run": run, "phase": phase.__dict__, "start_at_ns": start_at}
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.bus", json.dumps(args),
                                                    stdout=asyncio.subprocess.PIPE)
        pub: dict[str, Any] = {}
        try:
            stdout, _ = await asyncio.wait_for(proc.communicate(), phase.seconds + 60)
            pub = json.loads(stdout.decode().strip().splitlines()[-1])
        except (TimeoutError, ValueError, IndexError) as e:
            out["error"] = f"load publisher failed: {e!r}"
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await asyncio.sleep(1.5)  # the last fetches complete
        stop.set()
        for t in pullers:
            t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*pullers, return_exceptions=True)
        sent = pub.get("sent", {})
        out["audio"] = {"sent": sent.get("audio"), "received": len(audio_lat), "seq_gaps": gaps,
                        "latency_ms": summary(audio_lat, ndigits=3)}
        out["events"] = {"published": sent.get("events"), "publish_errors": sent.get("event_errors"),
                         "publish_to_ack_ms": summary(pub.get("ack_ms", []), ndigits=3)}
        for name, lat in consumers.items():
            out["events"][f"publish_to_receive_ms_{name}"] = summary(lat, ndigits=3)
            out["events"][f"received_{name}"] = len(lat)
    finally:
        with contextlib.suppress(Exception):
            await js.delete_stream(stream)
        with contextlib.suppress(Exception):
            await nc.close()
    return out


async def bus_overhead(url: str, streams: int, events_per_s: float, seconds: float) -> dict[str, Any]:
    phases = [BusPhase("idle", 1, 20, min(5.0, seconds)), BusPhase("load", streams, events_per_s, seconds)]
    out: list[dict[str, Any]] = []
    for p in phases:
        try:
            out.append(await run_phase(url, p))
        except Exception as e:
            raise RuntimeError(f"bus phase {p.name}: {type(e).__name__}: {e}") from e
    return {"phases": out}


if __name__ == "__main__":
    main()
