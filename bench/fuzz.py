"""`make bench-fuzz`: fuzzed inputs at a running platform, and the control API under every schemathesis check.

    make bench-fuzz                                   # 100,000 Twilio messages during a real call + control-api
    make bench-fuzz BENCH_ARGS="--messages 20000 --control-examples 0"

It starts what it needs itself, on free ports, so it never disturbs a `make run` on the machine: an embedded NATS,
the embedded LLM (or LLM_BASE_URL) and the data plane (ingress, media, stt, brain, tts) with Twilio signatures
checked. Then:

1. A real call (bench/twilio_caller.py) asks the agent questions, one turn after another: first a few turns
   without fuzz (the baseline), then while ``python -m bench.fuzz_ingress`` (a process of its own, off the
   caller's event loop) sends the generated messages and webhook bodies at the same ingress; the call goes on
   until the fuzz is done. Per turn: the agent's answer time and its audio's inter-arrival gaps, against the
   baseline. Ingress' RSS is sampled every second; its log is searched for errors; every process must be alive.
2. control-api: tests/control_api/test_control_fuzz.py run with every schemathesis check (the known deviations
   included) at ``--control-examples`` examples per operation against its own process: operations, cases, and
   failures by check.

The report goes to bench/results/fuzz-<time>.json / .md and latest-fuzz.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil
from voice_devstack.stack import SERVICES, free_port, free_ports, llm_command, nats_command, resolve_postgres, wait_port
from voice_runtime.bus import Bus
from voice_runtime.paths import state_dir
from voice_schemas import AgentConfig, NumberRoute, subjects

from . import stats
from .agent import BenchAgent
from .machine import cpu_model
from .speech import QUESTIONS, Voice
from .twilio_caller import TwilioCaller

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
STACK = ("ingress", "media", "stt", "brain", "tts")
TOKEN = "bench-fuzz-auth-token-0123456789"
PUBLIC = "https://voice.example.test"
NUMBER, FUZZ_NUMBER = "+15550100", "+15550190"
GAP_MS = 100  # agent audio arriving this much after the previous frame of the same answer counts as a gap


def log(msg: str) -> None:
    print(f"[bench-fuzz {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------- the platform
class Stack:
    """NATS, the LLM and the data plane as processes of this run, each logging to a file."""

    def __init__(self, root: Path, ingress_env: dict[str, str] | None = None) -> None:
        self.root = root
        self.ingress_env = ingress_env or {}  # more settings of ingress (the SIP fuzz turns SIP on)
        self.nats_port, *ports = free_ports(1 + len(STACK))
        self.ports = dict(zip(STACK, ports, strict=True))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.llm_url = os.environ.get("LLM_BASE_URL", "")

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    @property
    def ingress(self) -> str:
        return f"http://127.0.0.1:{self.ports['ingress']}"

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
        out = open(self.root / f"{name}.log", "wb")  # the process owns it
        self.procs[name] = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)

    def log(self, name: str) -> str:
        p = self.root / f"{name}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def start(self) -> None:
        self._spawn("nats", nats_command(self.nats_port, self.root / "nats"))
        if not wait_port("127.0.0.1", self.nats_port, 10):
            raise RuntimeError("NATS did not start")
        if not self.llm_url:
            port = free_port()
            self._spawn("llm", llm_command(port))
            self.llm_url = f"http://127.0.0.1:{port}/v1"
            if not _ready(self.llm_url + "/models", self.procs["llm"], 120):
                raise RuntimeError(f"the embedded LLM did not start: {self.log('llm')[-2000:]}")
        env = dict(os.environ, NATS_URL=self.nats_url, DATABASE_URL=resolve_postgres()[0], LLM_BASE_URL=self.llm_url,
                   LLM_MODEL=os.environ.get("LLM_MODEL", "smollm2"), TWILIO_AUTH_TOKEN=TOKEN,
                   TWILIO_ALLOW_UNSIGNED="false", PUBLIC_BASE_URL=PUBLIC, LOG_FORMAT="json", SHUTDOWN_GRACE_S="3",
                   STATE_DIR=str(self.root), PYTHONUNBUFFERED="1", MOONSHINE_MODELS_DIR=str(state_dir() / "models"))
        module = {n: m for n, m, _ in SERVICES}
        for name in STACK:
            extra = self.ingress_env if name == "ingress" else {}
            self._spawn(name, [sys.executable, "-m", module[name]],
                        dict(env, HTTP_PORT=str(self.ports[name]), **extra))
        for name in STACK:
            if not _ready(f"http://127.0.0.1:{self.ports[name]}/readyz", self.procs[name], 180):
                raise RuntimeError(f"{name} did not become ready: {self.log(name)[-2000:]}")

    def dead(self) -> list[str]:
        return sorted(n for n, p in self.procs.items() if p.poll() is not None)

    def stop(self) -> None:
        for p in reversed(list(self.procs.values())):
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


def _ready(url: str, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return True
        time.sleep(0.3)
    return False


def log_errors(text: str) -> Counter[str]:
    """Error-level lines of a JSON log (by event), uncaught exceptions and tracebacks."""
    out: Counter[str] = Counter()
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            if line.startswith(("ERROR", "CRITICAL", "Traceback")):
                out[line[:80]] += 1
            continue
        if isinstance(rec, dict) and rec.get("level") in ("error", "critical"):
            out[str(rec.get("event"))] += 1
    return out


async def quiet_agent(nats_url: str, number: str) -> None:
    """An agent with no greeting on ``number``: the fuzz's own calls go there (no speech to synthesise for each)."""
    bus = await Bus.connect(nats_url, "bench-fuzz")
    try:
        kv = await bus.provision()
        agent = AgentConfig(id="fuzz" + subjects.new_id()[:12], tenant_id="default", version=1, name="fuzz",
                            first_message="")
        raw = agent.model_dump_json().encode()
        await kv["agents"].put(subjects.agent_version_key(agent.id, agent.version), raw)
        await kv["agents"].put(subjects.agent_key(agent.id), raw)
        route = NumberRoute(number=number, tenant_id=agent.tenant_id, agent_id=agent.id)
        await kv["numbers"].put(subjects.number_key(number), route.model_dump_json().encode())
    finally:
        await bus.close()


# ---------------------------------------------------------------------------- the real call
def answer_figures(caller: TwilioCaller, spoke_at: float, answered_at: float | None, until: float) -> dict[str, Any]:
    """One turn: the answer's delay after the question's last frame, and its audio's gaps."""
    frames = [r.at for r in caller.received if spoke_at < r.at <= until]
    gaps = [round((b - a) * 1000, 1) for a, b in itertools.pairwise(frames)]
    return {"answer_ms": round((answered_at - spoke_at) * 1000) if answered_at else None,
            "frames": len(frames), "gaps_over_100ms": sum(1 for g in gaps if g > GAP_MS),
            "max_gap_ms": max(gaps, default=None)}


async def turn(caller: TwilioCaller, ulaw: bytes) -> dict[str, Any]:
    _, last = await caller.speak(ulaw)
    answered = await caller.wait_for_audio(last, 30)
    if answered is not None:
        await caller.wait_for_silence(1.5, 40)
    return answer_figures(caller, last, answered, time.monotonic())


def summary(turns: list[dict[str, Any]]) -> dict[str, Any]:
    answered = [t for t in turns if t["answer_ms"] is not None]
    return {
        "turns": len(turns), "answered": len(answered),
        "answer_ms": stats.summary([t["answer_ms"] for t in answered]),
        "frames": sum(t["frames"] for t in turns),
        "gaps_over_100ms": sum(t["gaps_over_100ms"] for t in turns),
        "max_gap_ms": max((t["max_gap_ms"] for t in turns if t["max_gap_ms"] is not None), default=None),
    }


async def rss_sampler(pid: int, samples: list[int], stop: asyncio.Event) -> None:
    proc = psutil.Process(pid)
    while not stop.is_set():
        with contextlib.suppress(psutil.Error):
            samples.append(proc.memory_info().rss)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def ingress_phase(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    agent = BenchAgent(stack.nats_url, NUMBER)
    await agent.install()
    await quiet_agent(stack.nats_url, FUZZ_NUMBER)
    voice = Voice()
    questions = [voice.utter(q).ulaw for q in QUESTIONS]
    caller = TwilioCaller(stack.ingress, auth_token=TOKEN, public_base_url=PUBLIC, to=NUMBER)
    call_id = await caller.dial()
    await caller.connect()
    greeted = await caller.wait_for_audio(0, 60)
    if greeted is not None:
        await caller.wait_for_silence(1.5, 30)
    rss: list[int] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(rss_sampler(stack.procs["ingress"].pid, rss, stop))
    baseline, fuzzed = [], []
    try:
        log(f"baseline: {args.baseline_turns} turns without fuzz")
        for i in range(args.baseline_turns):
            baseline.append(await turn(caller, questions[i % len(questions)]))
        rss_start = rss[-1] if rss else None
        counts_file = stack.root / "fuzz-counts.json"
        cmd = [sys.executable, "-m", "bench.fuzz_ingress", "--url", stack.ingress, "--public-base-url", PUBLIC,
               "--auth-token", TOKEN, "--messages", str(args.messages), "--concurrency", str(args.concurrency),
               "--seed", str(args.seed), "--call-id", call_id, "--bind-number", FUZZ_NUMBER,
               "--out", str(counts_file)]
        log(f"fuzz: {args.messages} messages at {stack.ingress}, {args.concurrency} at a time, during the call")
        t0 = time.monotonic()
        fuzzer = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT)
        i = 0
        while fuzzer.returncode is None and not caller.closed:
            fuzzed.append(await turn(caller, questions[i % len(questions)]))
            i += 1
        await fuzzer.wait()  # the call ended early: the fuzz still runs to its end
        fuzz_s = round(time.monotonic() - t0, 1)
        call_up = not caller.closed
        await asyncio.sleep(2)
    finally:
        stop.set()
        await sampler
        await caller.hangup()
        await agent.remove()
    counts = json.loads(counts_file.read_text()) if counts_file.exists() else {}
    mib = 2**20
    return {
        "call": {"call_id_kept": call_up, "close_code": caller.close_code, "baseline": summary(baseline),
                 "during_fuzz": summary(fuzzed), "turns_detail": {"baseline": baseline, "during_fuzz": fuzzed}},
        "fuzz": {**counts, "wall_s": fuzz_s, "exit_code": fuzzer.returncode},
        "ingress_rss_mib": {"start": round(rss_start / mib, 1) if rss_start else None,
                            "peak": round(max(rss) / mib, 1) if rss else None,
                            "end": round(rss[-1] / mib, 1) if rss else None, "samples": len(rss)},
        "ingress_log_errors": dict(log_errors(stack.log("ingress"))),
        "log_errors": {n: dict(log_errors(stack.log(n))) for n in STACK if n != "ingress"},
        "dead_processes": stack.dead(),
    }


# ---------------------------------------------------------------------------- control-api
FAILURE = re.compile(r"^[\s|]*- (ST\d+ [^\n]+)$", re.M)
TRACE = re.compile(r"^TRACE (\S+) (\S+) (\d+)$", re.M)
DATA_PLANE_503 = {("POST", "/v1/agents/{agent_id}/chats", "503"), ("POST", "/v1/agents/{agent_id}/web-calls", "503")}
OPERATION = re.compile(r"^_+ test_no_server_errors_and_responses_as_documented\[(.+?)\] _+$", re.M)


def control_phase(examples: int) -> dict[str, Any]:
    env = dict(os.environ, CONTROL_FUZZ_EXAMPLES=str(examples), CONTROL_FUZZ_ALL_CHECKS="1", FUZZ_TRACE="1")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "pytest", "tests/control_api/test_control_fuzz.py", "-q", "-s",
                        "-p", "no:cacheprovider", "-o", "addopts=", "--timeout=3600"],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    out = r.stdout + r.stderr
    traces = TRACE.findall(out)
    passed = re.search(r"(\d+) passed", out)
    failed = re.search(r"(\d+) failed", out)
    return {
        "examples_per_operation": examples,
        "operations": int(passed.group(1) if passed else 0) + int(failed.group(1) if failed else 0),
        "operations_failing": sorted(set(OPERATION.findall(out))),
        "cases": len(traces),
        "statuses": dict(sorted(Counter(s for _, _, s in traces).items())),
        "failures_by_check": dict(Counter(m.strip() for m in FAILURE.findall(out)).most_common()),
        # the two operations that reach the data plane (not run here) answer their documented 503
        "server_errors": sum(1 for m, p, s in traces if s.startswith("5") and (m, p, s) not in DATA_PLANE_503),
        "wall_s": round(time.monotonic() - t0, 1),
        "pytest_exit_code": r.returncode,
    }


# ---------------------------------------------------------------------------- the report
def markdown(rep: dict[str, Any]) -> str:
    m = rep["machine"]
    lines = ["# Fuzzed inputs (`make bench-fuzz`)", "", f"Run {rep['started_at']}, {rep['duration_s']} s; "
             f"machine: {m['cpu']} ({m['cores']} cores), load average at start {rep['load_average_at_start']}, "
             f"at end {rep['load_average_at_end']}.", ""]
    ing = rep.get("ingress")
    if ing:
        f, c = ing["fuzz"], ing["call"]
        b, d = c["baseline"], c["during_fuzz"]
        lines += [
            "## Twilio Media Streams and webhooks at ingress, during a real call", "",
            f"- Sent: **{f.get('messages')} messages** in {f.get('wall_s')} s: {f.get('ws_frames')} WebSocket frames "
            f"on {f.get('connections')} connections ({f.get('bound_connections')} of them started for a call "
            f"placed first, {f.get('bound_frames')} frames into live sessions) and {f.get('webhooks')} webhook "
            f"requests; {f.get('ws_frames_unsent')} frames left unsent after ingress closed the connection.",
            f"- Webhook responses: {f.get('http_status')}; WebSocket endings: {f.get('ws_close')}; "
            f"client-side errors: {f.get('client_errors') or 'none'}.",
            f"- Crashes: **{len(ing['dead_processes'])}** (processes gone: {ing['dead_processes'] or 'none'}); "
            f"ingress log errors: {ing['ingress_log_errors'] or 'none'}; other services' errors: "
            f"{ {k: v for k, v in ing['log_errors'].items() if v} or 'none'}.",
            f"- Ingress RSS (MiB, n={ing['ingress_rss_mib']['samples']} samples, 1/s): start "
            f"{ing['ingress_rss_mib']['start']}, peak {ing['ingress_rss_mib']['peak']}, end "
            f"{ing['ingress_rss_mib']['end']}.",
            f"- The real call: still connected at the end: **{c['call_id_kept']}**.", "",
            "| the real call | turns (answered) | answer p50 / p95 | agent frames | gaps > 100 ms | worst gap |",
            "|---|---|---|---|---|---|",
        ]
        for name, s in (("baseline, no fuzz", b), ("during the fuzz", d)):
            a = s["answer_ms"] or {}
            lines.append(f"| {name} | {s['turns']} ({s['answered']}) | {a.get('p50')} / {a.get('p95') or '-'} ms "
                         f"(n={a.get('n', 0)}) | {s['frames']} | {s['gaps_over_100ms']} | {s['max_gap_ms']} ms |")
        lines.append("")
    ctl = rep.get("control_api")
    if ctl:
        lines += [
            "## control-api under every schemathesis check", "",
            f"- {ctl['operations']} operations x up to {ctl['examples_per_operation']} examples: **{ctl['cases']} "
            f"cases**, statuses {ctl['statuses']}; server errors: **{ctl['server_errors']}** (not counting the "
            "documented 503 of the two operations that need the data plane, which this run does not start).",
            f"- Failures by check (one per failing operation): {ctl['failures_by_check'] or 'none'}.",
            f"- Operations with a failure: {len(ctl['operations_failing'])}: "
            f"{', '.join(ctl['operations_failing']) or 'none'}.", "",
            "ST201/ST202 are the known deviations named in tests/control_api/test_control_fuzz.py (`make test` runs "
            "every other check): validation the schema does not express, If-Match preconditions (412), pydantic's "
            "lax coercion and ignored unknown query parameters.", "",
        ]
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.monotonic()
    rep: dict[str, Any] = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
                           "config": {k: str(v) for k, v in vars(args).items()}}
    rep["machine"] = {"cpu": cpu_model(), "cores": os.cpu_count()}
    if args.messages > 0:
        stack = Stack(Path(tempfile.mkdtemp(prefix="voice-fuzz-")))
        log(f"starting NATS, the LLM and {', '.join(STACK)} (logs in {stack.root})")
        try:
            stack.start()
            rep["ingress"] = await ingress_phase(stack, args)
        finally:
            stack.stop()
    if args.control_examples > 0:
        log(f"control-api: every schemathesis check, {args.control_examples} examples per operation")
        rep["control_api"] = await asyncio.to_thread(control_phase, args.control_examples)
    rep["duration_s"] = round(time.monotonic() - t0, 1)
    rep["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return rep


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=100_000, help="Twilio messages and webhooks (0: skip)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--baseline-turns", type=int, default=4)
    ap.add_argument("--control-examples", type=int, default=50, help="per control-api operation (0: skip)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    rep = asyncio.run(main_async(args))
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    md = markdown(rep)
    (args.out / f"fuzz-{stamp}.json").write_text(json.dumps(rep, indent=2, default=str))
    (args.out / f"fuzz-{stamp}.md").write_text(md)
    (args.out / "latest-fuzz.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
