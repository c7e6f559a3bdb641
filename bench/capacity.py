"""`make bench-capacity`: how many concurrent calls ingress + media + the bus carry when the models answer at once.

    make bench-capacity                                  # sweep 10, 25, 50, 75, 100, 150 calls
    make bench-capacity BENCH_ARGS="--steps 50,100 --turns 3"

Starts its own stack on free ports: nats-server, ingress (``TWILIO_ALLOW_UNSIGNED=true``), media with its real
VAD and turn model, and ``bench/standins.py`` in place of stt, brain and tts (canned transcript, canned reply,
audio rendered once at start: the stages cost nothing, as if the models ran elsewhere on GPUs). The callers run
in processes of their own (``--caller-procs``): N concurrent Twilio Media Streams callers (bench/twilio_caller.py)
that hear the greeting, ask ``--turns`` questions in real-time 20 ms μ-law frames, hear each reply and hang up.
``--ingress-procs N`` runs N ingress replicas (as the Helm chart's ``replicaCount``), the calls dealt to them in
turn; their CPU and event-loop timers are summed into "ingress", each replica's share kept in ``ingress_replicas``.

Each step: every call's agent audio on the caller's clock (playout jitter: how much later than 20 ms after the
previous frame each came; inter-arrival jitter |gap - 20 ms|; late frames,
underruns, as ``bench.calls.analyse_playout``) and, per process, CPU over the step (from when every caller starts
dialling to when the last hangs up) as % of one core and as µs per call-frame (one call's 20 ms: a caller frame
in, and an agent frame out while it speaks; "caller" sums the caller processes). The sweep stops at the first
step with playout jitter p99 >= 20 ms, an underrun, or a failed call or turn; the step before it is the knee. Writes
bench/results/latest-capacity.{md,json}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil
from voice_devstack import priority
from voice_devstack.stack import free_ports, nats_command, wait_port
from voice_runtime.service import event_loop_factory

from . import looplag
from .agent import BenchAgent
from .machine import cpu_model, git_commit
from .stats import summary

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
NUMBER = "+15550177"
JITTER_P99_MAX_MS = 20.0
FRAMES_PER_S = 50
LAG_SERVICES = ("ingress", "media")  # the real-time loops whose late timers each step reports


def log(msg: str) -> None:
    print(f"[capacity {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- the caller process
def _gap_deviations(received: list[Any], reply_gap_s: float) -> list[float]:
    """Inter-arrival gap minus the previous frame's duration (ms) of consecutive agent frames within a reply."""
    return [(r.at - prev.at - len(prev.payload) / 8000.0) * 1000
            for prev, r in itertools.pairwise(received) if r.at - prev.at <= reply_gap_s]


def jitter_values(received: list[Any], reply_gap_s: float = 1.0) -> list[float]:
    """|inter-arrival gap - frame duration| (ms) of consecutive agent frames within a reply: the values
    ``bench.calls.analyse_playout`` summarises, kept so that a step's percentiles span all its calls."""
    return [abs(d) for d in _gap_deviations(received, reply_gap_s)]


def lateness_values(received: list[Any], reply_gap_s: float = 1.0) -> list[float]:
    """Playout jitter: how much later than the previous frame's duration each agent frame within a reply came
    (ms, 0 when on time or early). The knee's criterion. Unlike ``jitter_values`` it does not count the frames a
    reply's start sends at once to fill the caller's buffer (the playout lead: gaps of ~0 ms, |0 - 20| = 20 ms
    each, which alone put the symmetric p99 near 20 ms at any load): a frame early is buffered, not heard
    differently; a frame late is what a caller's jitter buffer must absorb."""
    return [max(0.0, d) for d in _gap_deviations(received, reply_gap_s)]


async def _one_call(url: str, questions: list[Any], delay_s: float, timeouts: Any,
                    http: httpx.AsyncClient | None = None) -> tuple[dict[str, Any], Any]:
    """One caller's call: its outcome and the caller (its frames are analysed once every call of the process is
    done, not on the loop that still paces the other calls' audio)."""
    from .calls import Target, ask, dial, wait_audio_after, wait_reply_done

    await asyncio.sleep(delay_s)
    target = Target("capacity", url, to=NUMBER)
    c = target.caller(http)
    out: dict[str, Any] = {"error": None, "turns": 0, "answered": 0, "v2v_ms": [], "ingress": url}
    try:
        call_id = await dial(c)
        await c.connect()
        first = await wait_audio_after(c, 0.0, timeouts.greeting_s)
        if first is None:
            out["error"] = "no greeting"
        else:
            await wait_reply_done(c, first.at, timeouts)
            for i, q in enumerate(questions):
                tr = await ask(c, target, call_id, i, q, timeouts)
                out["turns"] += 1
                if tr.error is None:
                    out["answered"] += 1
                    out["v2v_ms"].append(tr.v2v_ms)
                elif out["error"] is None:
                    out["error"] = tr.error
                if c.closed:
                    out["error"] = f"stream closed by the far end (code {c.close_code})"
                    break
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"[:300]
    finally:
        started = c.timings.stream_started
        out["call_s"] = time.monotonic() - started if started else 0.0
        out["send_lag_max_ms"] = round(c.timings.send_lag_max_s * 1000, 1) if c.timings.send_lag_max_s else None
        await c.hangup()
    return out, c


def _analysed(out: dict[str, Any], c: Any) -> dict[str, Any]:
    """A call's outcome with the figures of the agent audio its caller received."""
    from .calls import analyse_playout

    p = analyse_playout(c.received)
    out.update(frames=p.frames, late_frames=p.late_frames, underruns=p.underruns, underrun_ms=p.underrun_ms,
               odd_sizes=p.odd_sizes, jitter=[round(x, 2) for x in jitter_values(c.received)],
               lateness=[round(x, 2) for x in lateness_values(c.received)])
    return out


async def _callers(args: argparse.Namespace) -> dict[str, Any]:
    from .calls import Timeouts
    from .speech import QUESTIONS, Voice

    voice = Voice()
    qs = [voice.utter(q) for q in QUESTIONS[:4]]
    t = Timeouts(greeting_s=30.0, reply_s=20.0, quiet_s=1.0, max_reply_s=30.0)
    rnd = random.Random(args.seed)
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # the parent's GO
    t0 = time.monotonic()
    # the instrument must not stall: a full collection walks every frame received so far (tens of ms at tens of
    # calls), a gap the callers would record as the platform's; a step's garbage is small, it waits till the end
    gc.collect()
    gc.disable()
    try:
        # one HTTP client for every webhook of the process (a client per dial costs ~10-20 ms of CPU to build)
        async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=None)) as http:
            urls = [u for u in args.url.split(",") if u]
            done = await asyncio.gather(*(
                _one_call(urls[(args.first + k) % len(urls)], [qs[(k + j) % len(qs)] for j in range(args.turns)],
                          rnd.uniform(0, args.stagger_s), t, http)
                for k in range(args.calls)))
    finally:
        gc.enable()
    wall_s = time.monotonic() - t0
    print("END", flush=True)
    return {"calls": [_analysed(out, c) for out, c in done], "wall_s": wall_s}


def caller_main(args: argparse.Namespace) -> None:
    # on uvloop, as the platform's services (EVENT_LOOP): the load generator shares the platform's cores, and each
    # of its cycles not spent is one the platform has
    with asyncio.Runner(loop_factory=event_loop_factory("uvloop")) as runner:
        rep = runner.run(_callers(args))
    Path(args.result).write_text(json.dumps(rep))


# --------------------------------------------------------------------------- the stack
def _cpu(pid: int) -> float:
    """User + system CPU seconds of a process and its children."""
    with contextlib.suppress(psutil.Error):
        p = psutil.Process(pid)
        total = 0.0
        for q in [p, *p.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                ct = q.cpu_times()
                total += ct.user + ct.system
        return total
    return 0.0


def _busy() -> tuple[float, float]:
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    return sum(t) - idle, sum(t)


class Stack:
    """nats-server, ingress, media and the stand-ins, each a process of its own on free ports."""

    def __init__(self, tmp: Path, tts_rtf: float, settings: dict[str, str] | None = None,
                 ingress_procs: int = 1) -> None:
        self.tmp = tmp
        self.tts_rtf = tts_rtf
        self.settings = settings or {}  # --set: given to every process of the stack, after the bench's own
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        # ingress replicas, as the Helm chart's replicaCount runs them: "ingress", "ingress-2", ...
        self.ingress_names = ingress_names(ingress_procs)
        roles = ("nats", *self.ingress_names, "media", "standins")
        self.ports = dict(zip(roles, free_ports(len(roles)), strict=True))
        self.nats_url = f"nats://127.0.0.1:{self.ports['nats']}"

    @property
    def ingress_urls(self) -> dict[str, str]:
        """Each ingress replica's base URL, by name."""
        return {n: f"http://127.0.0.1:{self.ports[n]}" for n in self.ingress_names}

    @property
    def ingress(self) -> str:
        """The callers' target: every ingress replica's base URL, comma-separated (a call goes to one of them, as
        a load balancer in front of the replicas would send it)."""
        return ",".join(self.ingress_urls.values())

    def _env(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("TWILIO_", "SIP_", "WEBRTC_", "PUBLIC_BASE_URL", "HTTP_", "LOG_", "OTEL_"))}
        env.update(NATS_URL=self.nats_url, HTTP_PORT=str(self.ports[name]), LOG_LEVEL="WARNING", LOG_FORMAT="json",
                   STATE_DIR=str(self.tmp), PYTHONUNBUFFERED="1", TWILIO_ALLOW_UNSIGNED="true", SIP_ENABLED="false",
                   STANDIN_TTS_RTF=str(self.tts_rtf), SHUTDOWN_GRACE_S="3")
        env.update(self.settings)
        return env

    def start(self) -> None:
        nats = subprocess.Popen(nats_command(self.ports["nats"], self.tmp / "nats"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        self.procs["nats-server"] = nats
        if not wait_port("127.0.0.1", self.ports["nats"], 10):
            raise RuntimeError("nats-server did not start")
        services = [*((n, "voice_ingress") for n in self.ingress_names), ("media", "voice_media"),
                    ("standins", "bench.standins")]
        for name, module in services:
            env = self._env(name)
            cmd = [sys.executable, "-m", module]
            if name == "standins":  # they stand in for stt, brain and tts: `make run`'s model processes, as niced
                cmd = priority.niced(cmd, priority.model_nice(env), own_session=False)
            with open(self.tmp / f"{name}.log", "wb") as logf:
                self.procs[name] = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=logf, stderr=subprocess.STDOUT)
        for name, _ in services:
            if not self._ready(name, 120):
                tail = (self.tmp / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} did not become ready:\n{tail}")

    def _ready(self, name: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.ports[name]}/readyz"
        while time.monotonic() < deadline and self.procs[name].poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=1).status_code == 200:
                    return True
            time.sleep(0.2)
        return False

    def pids(self) -> dict[str, int]:
        return {n: p.pid for n, p in self.procs.items()}

    def dead(self) -> list[str]:
        """The processes of the stack that have exited."""
        return [n for n, p in self.procs.items() if p.poll() is not None]

    def stop(self) -> None:
        for name in ("standins", "media", *self.ingress_names, "nats-server"):  # services first, NATS last
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


# --------------------------------------------------------------------------- one step
async def run_step(stack: Stack, n: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    k = max(1, min(args.caller_procs, n))
    per = [n // k + (1 if i < n % k else 0) for i in range(k)]
    callers: list[asyncio.subprocess.Process] = []
    files = [tmp / f"callers-{n}-{i}.json" for i in range(k)]
    for i, m in enumerate(per):
        callers.append(await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.capacity", "--caller", "--url", stack.ingress, "--calls", str(m),
            "--turns", str(args.turns), "--stagger-s", str(args.stagger_s), "--seed", str(n * 100 + i),
            "--first", str(sum(per[:i])),
            "--result", str(files[i]), cwd=REPO, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE))

    async def line(p: asyncio.subprocess.Process, want: str, timeout: float) -> None:
        assert p.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            raw = await asyncio.wait_for(p.stdout.readline(), max(0.1, deadline - time.monotonic()))
            if not raw:
                raise RuntimeError(f"a caller process exited before {want}")
            if raw.decode().strip() == want:
                return
        raise TimeoutError(want)

    try:
        await asyncio.gather(*(line(p, "READY", 120) for p in callers))
        pids = {**stack.pids(), **{f"caller-{i}": p.pid for i, p in enumerate(callers)}}
        lag_names = (*stack.ingress_names, *LAG_SERVICES[1:])
        lag0 = await looplag.scrape(stack.ports, lag_names)
        cpu0 = {name: _cpu(pid) for name, pid in pids.items()}
        busy0, t0 = _busy(), time.monotonic()
        for p in callers:
            assert p.stdin is not None
            p.stdin.write(b"GO\n")
            await p.stdin.drain()
        limit = args.stagger_s + 60 + args.turns * 40
        await asyncio.gather(*(line(p, "END", limit) for p in callers))
        wall = time.monotonic() - t0
        cpu1 = {name: _cpu(pid) for name, pid in pids.items()}
        busy1 = _busy()
        lag = merged_replicas(looplag.figures(lag0, await looplag.scrape(stack.ports, lag_names)),
                              stack.ingress_names)
        await asyncio.gather(*(asyncio.wait_for(p.wait(), 30) for p in callers))
    finally:
        for p in callers:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                await p.wait()
    calls = [c for f in files if f.exists() for c in json.loads(f.read_text())["calls"]]
    cpu_s = {name: cpu1[name] - cpu0[name] for name in stack.pids() if name not in stack.ingress_names}
    cpu_s["ingress"] = sum(cpu1[name] - cpu0[name] for name in stack.ingress_names)  # every replica
    cpu_s["caller"] = sum(cpu1[name] - cpu0[name] for name in pids if name.startswith("caller"))  # all of them
    step = step_figures(n, calls, cpu_s, wall,
                        (busy1[0] - busy0[0]) / max(1e-9, busy1[1] - busy0[1]), dead=stack.dead(),
                        jitter_max_ms=args.jitter_p99_max_ms)
    step["loop_lag"] = lag
    step["ingress_procs"] = len(stack.ingress_names)
    calls_at = Counter(c.get("ingress", "") for c in calls)
    step["ingress_replicas"] = {
        name: {"calls": calls_at[url],
               "cpu_pct": round(100 * (cpu1[name] - cpu0[name]) / wall, 1) if wall > 0 else None}
        for name, url in stack.ingress_urls.items()}
    return step


def ingress_names(n: int) -> tuple[str, ...]:
    """The ingress replicas' names in the stack and its reports: "ingress", then "ingress-2", "ingress-3"..."""
    return ("ingress", *(f"ingress-{i}" for i in range(2, n + 1)))


def merged_replicas(lag: dict[str, Any], names: tuple[str, ...], into: str = "ingress") -> dict[str, Any]:
    """Per-service loop-lag figures with the replicas ``names`` summed into one ``into`` entry: their timers and
    late timers add up, the p99 bound is the worst replica's (None, unbounded, wins)."""
    parts = [lag[n] for n in names if n in lag]
    out = {k: v for k, v in lag.items() if k not in names}
    if parts:
        p99s = [p["p99_le_ms"] for p in parts]
        out[into] = {"timers": sum(p["timers"] for p in parts), "over_20ms": sum(p["over_20ms"] for p in parts),
                     "p99_le_ms": None if None in p99s else max(p99s), "nice": parts[0]["nice"],
                     "replicas": len(parts)}
    return out


def step_figures(n: int, calls: list[dict[str, Any]], cpu_s: dict[str, float], wall_s: float, machine_busy: float,
                 dead: list[str] | None = None, jitter_max_ms: float = JITTER_P99_MAX_MS) -> dict[str, Any]:
    """One step's report from the callers' per-call results and each process's CPU seconds over the step."""
    failed = [c for c in calls if c["error"] is not None]
    jitter = [x for c in calls for x in c["jitter"]]
    lateness = [x for c in calls for x in c.get("lateness", [])]
    frames = sum(c["frames"] for c in calls)
    late = sum(c["late_frames"] for c in calls)
    call_s = sum(c["call_s"] for c in calls)
    call_frames = call_s * FRAMES_PER_S  # 20 ms of one call: a caller frame in (and an agent frame out)
    js = summary(jitter, ndigits=2)
    ls = summary(lateness, ndigits=2)
    v2v = summary([x for c in calls for x in c["v2v_ms"]])
    platform = ("ingress", "media", "nats-server")
    processes: dict[str, Any] = {}
    for name, s in cpu_s.items():
        processes[name] = {"cpu_pct": round(100 * s / wall_s, 1) if wall_s > 0 else None,
                           "cpu_us_per_call_frame": round(s / call_frames * 1e6, 1) if call_frames else None}
    plat_s = sum(cpu_s.get(p, 0.0) for p in platform)
    lags = [c["send_lag_max_ms"] for c in calls if c["send_lag_max_ms"] is not None]
    step: dict[str, Any] = {
        "calls": n,
        "calls_ok": len(calls) - len(failed),
        "calls_failed": len(failed) + max(0, n - len(calls)),
        "errors": sorted({c["error"] for c in failed})[:5],
        "turns": sum(c["turns"] for c in calls),
        "turns_answered": sum(c["answered"] for c in calls),
        "agent_frames": frames,
        "call_seconds": round(call_s, 1),
        "jitter_ms": {q: js.get(q) for q in ("n", "p50", "p95", "p99", "max")},
        "lateness_ms": {q: ls.get(q) for q in ("n", "p50", "p95", "p99", "max")},
        "late_frames": late,
        "late_pct": round(100 * late / frames, 2) if frames else None,
        "underruns": sum(c["underruns"] for c in calls),
        "underrun_ms": round(sum(c["underrun_ms"] for c in calls), 1),
        "odd_sized_frames": sum(c["odd_sizes"] for c in calls),
        "voice_to_voice_ms": {q: v2v.get(q) for q in ("n", "p50", "p95", "max")},
        "caller_send_lag_max_ms": max(lags) if lags else None,
        "wall_s": round(wall_s, 1),
        "processes": processes,
        "platform": {"processes": list(platform),
                     "cpu_pct": round(100 * plat_s / wall_s, 1) if wall_s > 0 else None,
                     "cpu_us_per_call_frame": round(plat_s / call_frames * 1e6, 1) if call_frames else None},
        "machine_cpu_pct_all_cores": round(100 * machine_busy, 1),
        "processes_died": dead or [],
    }
    step["verdict"] = verdict(step, jitter_max_ms)
    return step


def verdict(step: dict[str, Any], jitter_max_ms: float = JITTER_P99_MAX_MS) -> str | None:
    """None when the step holds (every call and turn done, playout jitter p99 < 20 ms, no underrun), else why not."""
    why: list[str] = []
    if step["processes_died"]:
        why.append(f"process(es) died: {', '.join(step['processes_died'])}")
    if step["calls_failed"]:
        why.append(f"{step['calls_failed']} call(s) failed")
    if step["turns_answered"] < step["turns"]:
        why.append(f"{step['turns'] - step['turns_answered']} turn(s) without a reply")
    p99 = step["lateness_ms"]["p99"]
    if p99 is None:
        why.append("no playout jitter p99 (too few agent frames)")
    elif p99 >= jitter_max_ms:
        why.append(f"playout jitter p99 {p99} ms >= {jitter_max_ms:g} ms")
    if step["underruns"]:
        why.append(f"{step['underruns']} underrun(s)")
    return "; ".join(why) or None


# --------------------------------------------------------------------------- report
def markdown(rep: dict[str, Any]) -> str:
    k = rep["knee"]
    lines = [
        "# Capacity of the media plane (models answer at once)", "",
        f"{rep['started_at']}, {rep['machine']['cpu_model']}, {rep['machine']['cores_logical']} logical cores, load "
        f"average at start {rep['machine']['load_average_at_start']}, commit {rep['machine']['git'].get('commit')}", "",
        f"Stack: {rep['stack']}" + (
            f"; settings: {', '.join(f'{k}={v}' for k, v in rep['config'].get('settings', {}).items())}"
            if rep["config"].get("settings") else ""), "",
        f"**Knee: {k['last_good_calls']} concurrent calls** (first failing step: {k['first_bad_calls']}; "
        f"{k['reason']})", "",
        "| calls | ok | turns answered | playout jitter p99 / max ms (n) | arrival jitter p50 / p99 ms | late % | "
        "underruns | loop lag > 20 ms: ingress / media | v2v p50 ms | platform CPU % | platform µs/frame | "
        "machine CPU % | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in rep["steps"]:
        j, lt, lag = s["jitter_ms"], s.get("lateness_ms") or {}, s.get("loop_lag") or {}
        lag_cells = " / ".join(f"{lag[n]['over_20ms']} of {lag[n]['timers']}" if lag.get(n) else "n/a"
                               for n in ("ingress", "media"))
        lines.append(
            f"| {s['calls']} | {s['calls_ok']} | {s['turns_answered']}/{s['turns']} | {lt.get('p99')} / "
            f"{lt.get('max')} ({lt.get('n')}) | {j['p50']} / {j['p99']} | {s['late_pct']} | {s['underruns']} | "
            f"{lag_cells} | {s['voice_to_voice_ms']['p50']} | "
            f"{s['platform']['cpu_pct']} | {s['platform']['cpu_us_per_call_frame']} | "
            f"{s['machine_cpu_pct_all_cores']} | {s['verdict'] or 'ok'} |")
    names = sorted({n for s in rep["steps"] for n in s["processes"]})
    lines += ["", "Where the CPU goes: % of one core, and µs per call-frame (one call's 20 ms), per process", "",
              "| calls | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for s in rep["steps"]:
        cells = [f"{s['processes'][n]['cpu_pct']}% / {s['processes'][n]['cpu_us_per_call_frame']} µs"
                 if n in s["processes"] else "" for n in names]
        lines.append(f"| {s['calls']} | " + " | ".join(cells) + " |")
    lines += ["", *(f"- {n}" for n in rep["notes"]), ""]
    return "\n".join(lines)


def write(rep: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    j, md = out / "latest-capacity.json", out / "latest-capacity.md"
    j.write_text(json.dumps(rep, indent=2, default=str))
    md.write_text(markdown(rep))
    return j, md


NOTES = [
    "stt, brain and tts are stand-ins (bench/standins.py, one process): same durable consumers and events as the "
    "real services, canned transcript and reply, piper audio rendered once at start and published as 20 ms "
    "frames one sentence at a time; the real brain's history in KV and its intents are not run, so the figures "
    "are ingress + media + the bus (platform = ingress + media + nats-server). The stand-ins run at MODEL_NICE "
    "(10), as `make run` starts the model stages they replace.",
    "The callers run in their own process(es) and are measured apart ('caller'); a caller whose own 20 ms clock "
    "fell behind (caller_send_lag_max_ms) measures late frames of its own, not only the platform's.",
    "Playout jitter (the knee's criterion): how much later than 20 ms after the previous agent frame of a reply "
    "each frame came, at the caller (0 when on time or early); arrival jitter: |inter-arrival gap - 20 ms| (it "
    "also counts the frames a reply's start sends at once to fill the caller's 60 ms playout lead, ~20 ms each, "
    "so its p99 sits near 20 ms at any load; the knee used it until 2026-12-02); underrun: the caller's playout "
    "ran dry mid-reply (bench.calls.analyse_playout); loop lag: the 20 ms timers of ingress's and media's event "
    "loops (voice_event_loop_lag_seconds, over the step) that ran more than 20 ms late. CPU: user + system "
    "seconds over the step (first dial to last hangup) / wall seconds; µs per call-frame: CPU seconds / (sum of "
    "call seconds x 50).",
]


def settings_of(pairs: list[str]) -> dict[str, str]:
    """``--set NAME=VALUE`` pairs as a dict; SystemExit on one without ``=`` or a name."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq or not name.strip():
            raise SystemExit(f"--set takes NAME=VALUE, not {pair!r}")
        out[name.strip()] = value
    return out


async def sweep(args: argparse.Namespace) -> dict[str, Any]:
    steps_wanted = sorted({int(x) for x in args.steps.split(",") if x.strip() and int(x) > 0})
    rep: dict[str, Any] = {
        "mode": "capacity", "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": {"steps": steps_wanted, "turns": args.turns, "caller_procs": args.caller_procs,
                   "stagger_s": args.stagger_s, "tts_rtf": args.tts_rtf, "ingress_procs": args.ingress_procs,
                   "jitter_p99_max_ms": args.jitter_p99_max_ms, "keep_going": args.keep_going,
                   "settings": settings_of(args.set)},
        "machine": {"cpu_model": cpu_model(), "cores_logical": os.cpu_count(),
                    "load_average_at_start": [round(x, 2) for x in os.getloadavg()], "git": git_commit()},
        "stack": f"nats-server, ingress (Twilio Media Streams, unsigned; {args.ingress_procs} process"
                 f"{'es, the calls spread over them in turn' if args.ingress_procs > 1 else ''}), media (Silero VAD "
                 "+ turn model), stand-ins for stt/brain/tts",
        "steps": [], "notes": list(NOTES),
    }
    with tempfile.TemporaryDirectory(prefix="voice-capacity-") as root:
        tmp = Path(root)
        stack = Stack(tmp, args.tts_rtf, settings_of(args.set), args.ingress_procs)
        agent: BenchAgent | None = None
        try:
            log("starting nats-server, ingress, media and the stand-ins on free ports")
            await asyncio.to_thread(stack.start)
            agent = BenchAgent(stack.nats_url, NUMBER)
            await agent.install()
            knee: dict[str, Any] = {"last_good_calls": 0, "first_bad_calls": None, "reason": None}
            for n in steps_wanted:
                log(f"{n} calls x {args.turns} question(s)")
                step = await run_step(stack, n, args, tmp)
                rep["steps"].append(step)
                j = step["lateness_ms"]
                log(f"  {step['calls_ok']}/{n} ok, turns {step['turns_answered']}/{step['turns']}, playout jitter "
                    f"p50 {j['p50']} p99 {j['p99']} ms, late {step['late_pct']}%, underruns {step['underruns']}, "
                    f"platform CPU {step['platform']['cpu_pct']}% ({step['platform']['cpu_us_per_call_frame']} "
                    f"µs/frame), caller {step['processes'].get('caller', {}).get('cpu_pct')}%"
                    + (f": {step['verdict']}" if step["verdict"] else ""))
                if step["verdict"]:
                    if knee["first_bad_calls"] is None:
                        knee.update(first_bad_calls=n, reason=step["verdict"])
                    if not args.keep_going or step["processes_died"]:
                        break
                elif knee["first_bad_calls"] is None:
                    knee["last_good_calls"] = n
                await asyncio.sleep(args.pause_s)  # the calls' ends settle before the next step
            if knee["first_bad_calls"] is None:
                knee["reason"] = f"every step held, up to {steps_wanted[-1] if steps_wanted else 0} calls"
            rep["knee"] = knee
        finally:
            if agent is not None:
                await agent.remove()
            await asyncio.to_thread(stack.stop)
    rep["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return rep


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", default="10,25,50,75,100,150", help="concurrent calls per step, ascending")
    ap.add_argument("--turns", type=int, default=2, help="questions per call")
    ap.add_argument("--caller-procs", type=int, default=1, help="processes the callers are spread over")
    ap.add_argument("--ingress-procs", type=int, default=1, choices=range(1, 9), metavar="{1..8}",
                    help="ingress replicas (processes) on the node, the calls spread over them in turn as a load "
                         "balancer would; their CPU and loop lag are reported summed as 'ingress'")
    ap.add_argument("--stagger-s", type=float, default=3.0, help="calls start at random over this long")
    ap.add_argument("--tts-rtf", type=float, default=0.05, help="stand-in tts: seconds per second of audio")
    ap.add_argument("--jitter-p99-max-ms", type=float, default=JITTER_P99_MAX_MS,
                    help="a step holds while agent-audio playout jitter p99 at the caller stays under this")
    ap.add_argument("--keep-going", action="store_true",
                    help="run every step even after one fails (the knee is still the last step before the first "
                         "failure)")
    ap.add_argument("--pause-s", type=float, default=3.0, help="pause between steps")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="a setting of ingress and media for the run (e.g. TURN_MODEL_ENABLED=false, "
                    "TWILIO_FRAMES_PER_MESSAGE=1); repeatable, recorded in the report")
    # the caller process (started by the sweep)
    ap.add_argument("--caller", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--calls", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)  # the process's first call's index
    ap.add_argument("--result", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def run(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    rep = asyncio.run(sweep(args))
    j, md = write(rep, args.out)
    print(markdown(rep))
    log(f"report: {j} and {md}")
    return rep


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.caller:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        caller_main(args)
        return
    run(argv)


if __name__ == "__main__":
    main()
