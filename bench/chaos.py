"""`make bench-chaos`: short phone calls while a random stage worker is killed (`kill -9`) every few seconds and
brought back, then what the callers heard and what PostgreSQL stored, compared with what they said.

    make run STAGE_REPLICAS=2 TWILIO_ALLOW_UNSIGNED=true    # in another terminal: two of each stage, restarted
    make bench-chaos                                        # 100 calls of 3 turns, 4 at a time, a kill every 5 s
    make bench-chaos BENCH_ARGS="--calls 10 --kill-every 8"

The killer picks a stage (media, stt, brain, tts) and one of its replicas at random, kills the process listening on
that replica's port and measures how long until that port answers /readyz again (`make run` starts it again after
1 s). The calls are the bench's Twilio-protocol callers (bench/calls.py) with piper questions.

Figures (each with n): calls completed (every question answered), turns affected (no reply, or the reply later than
``--late-ms`` after the end of the question), duplicate turns (a question answered twice: more agent turns stored for
one caller turn, or more agent turns than questions and greeting), transcript events lost or doubled (caller turns
stored per call compared with the questions asked), and the restart-to-ready time per stage. The small version of
this run (a few calls, one kill per stage) is tests/resilience/test_chaos.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from .agent import BenchAgent
from .calls import CallResult, Target, Timeouts, conversation
from .machine import git_commit
from .procs import listening_pids
from .speech import QUESTIONS, Utterance, Voice
from .stats import summary

RESULTS = Path(__file__).resolve().parent / "results"
STAGE_PORTS = {"media": 8081, "stt": 8082, "brain": 8083, "tts": 8084}

Restart = Callable[[str, int], Awaitable[None]]  # (stage, port) -> bring that replica back (None: a supervisor does)


@dataclass
class Kill:
    stage: str
    port: int
    pid: int
    at: float  # wall clock, s
    ready_after_s: float | None = None  # until the port answered /readyz again; None: not within the wait


@dataclass
class CallCheck:
    call_id: str
    asked: int
    caller_turns: int
    agent_turns: int
    duplicate_replies: int  # caller turns answered by more than one agent turn


@dataclass
class ChaosReport:
    calls: list[CallResult] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)
    checks: list[CallCheck] = field(default_factory=list)
    spans: list[tuple[float, float]] = field(default_factory=list)  # each call's wall-clock start and end
    late_ms: float = 3000.0

    def kills_during(self, i: int) -> int:
        start, end = self.spans[i]
        return sum(1 for k in self.kills if start <= k.at <= end)

    def figures(self) -> dict[str, Any]:
        turns = [t for c in self.calls for t in c.turns]
        completed = [c for c in self.calls if not c.error and c.turns and all(t.error is None for t in c.turns)]
        affected = [t for t in turns if t.error is not None or (t.v2v_ms is not None and t.v2v_ms > self.late_ms)]
        asked = sum(ch.asked for ch in self.checks)
        lost = sum(max(0, ch.asked - ch.caller_turns) for ch in self.checks)
        doubled = sum(max(0, ch.caller_turns - ch.asked) for ch in self.checks)
        per_call_affected = [sum(1 for t in c.turns if t in affected) for c in self.calls]
        over = [i for i, n in enumerate(per_call_affected) if self.spans and n > max(1, self.kills_during(i))]
        by_stage: dict[str, Any] = {}
        for stage in sorted({k.stage for k in self.kills}):
            ready = [k.ready_after_s * 1000 for k in self.kills if k.stage == stage and k.ready_after_s is not None]
            by_stage[stage] = {"kills": sum(1 for k in self.kills if k.stage == stage),
                               "restart_to_ready_ms": summary(ready)}
        return {
            "calls": len(self.calls), "calls_completed": len(completed),
            "turns": len(turns), "turns_affected": len(affected),
            "max_affected_turns_in_a_call": max(per_call_affected, default=0),
            "calls_over_one_affected_turn_per_kill": len(over),
            "duplicate_turns": sum(ch.duplicate_replies for ch in self.checks),
            "questions_asked": asked, "transcripts_lost": lost, "transcripts_doubled": doubled,
            "kills": len(self.kills), "stages": by_stage,
            "v2v_ms": summary([t.v2v_ms for t in turns if t.v2v_ms is not None]),
        }


def replica_ports(replicas: int, base: Mapping[str, int] = STAGE_PORTS) -> dict[str, list[int]]:
    """The ports `make run STAGE_REPLICAS=n` gives each stage's replicas (voice_devstack.stack.service_processes)."""
    return {stage: [port + 100 * i for i in range(replicas)] for stage, port in base.items()}


async def ready(port: int, timeout: float) -> float | None:
    """Seconds until http://127.0.0.1:port/readyz answers 200, or None."""
    t0 = time.monotonic()
    async with httpx.AsyncClient(timeout=1.0) as http:
        while time.monotonic() - t0 < timeout:
            try:
                if (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    return None


class Killer:
    """Kills a random replica of a random stage every ``every_s``; the replica comes back meanwhile (``restart``, or
    a supervisor such as `make run`'s), and a stage with a replica still coming back is not killed again."""

    def __init__(self, ports: dict[str, list[int]], every_s: float, *, restart: Restart | None = None,
                 seed: int = 0, ready_timeout_s: float = 90.0, order: list[str] | None = None) -> None:
        """``order``: kill these stages in turn, once each, instead of random stages without end."""
        self.ports, self.every_s, self.restart = ports, every_s, restart
        self.order = list(order) if order is not None else None
        self.rng = random.Random(seed)
        self.ready_timeout_s = ready_timeout_s
        self.kills: list[Kill] = []
        self._pending: list[Kill] = []  # killed, not ready again yet
        self._tasks: list[asyncio.Task[None]] = []

    async def kill(self, stage: str, port: int | None = None) -> Kill | None:
        """Kill one replica of ``stage`` (a random one unless ``port``) and bring it back in the background; None
        when the stage has a replica still coming back (never all of a stage's replicas at once)."""
        if any(k.stage == stage and k.ready_after_s is None for k in self._pending):
            return None
        port = port if port is not None else self.rng.choice(self.ports[stage])
        pid = listening_pids({stage: port}).get(stage)
        if pid is None:
            return None
        k = Kill(stage, port, pid, time.time())
        os.kill(pid, signal.SIGKILL)
        self.kills.append(k)
        self._pending.append(k)
        self._tasks.append(asyncio.create_task(self._back(k)))
        return k

    async def _back(self, k: Kill) -> None:
        try:
            if self.restart is not None:
                await self.restart(k.stage, k.port)
            if await ready(k.port, self.ready_timeout_s) is not None:
                k.ready_after_s = round(time.time() - k.at, 2)
        finally:
            self._pending.remove(k)

    async def run(self, stop: asyncio.Event) -> None:
        if self.every_s <= 0:  # the baseline: the same calls with nothing killed
            return
        try:
            while not stop.is_set():
                if self.order is not None and not self.order:
                    break
                try:
                    await asyncio.wait_for(stop.wait(), self.every_s)
                    break
                except TimeoutError:
                    pass
                stage = self.order[0] if self.order is not None else self.rng.choice(sorted(self.ports))
                if await self.kill(stage) is not None and self.order is not None:
                    self.order.pop(0)
        finally:
            if self._tasks:  # every killed replica back (or given up on) before the figures are taken
                await asyncio.gather(*self._tasks, return_exceptions=True)


async def check_calls(database_url: str, calls: list[CallResult], asked: int, wait_s: float = 30.0) -> list[CallCheck]:
    """What PostgreSQL stored of each call (analytics writes it a moment after the call ends)."""
    conn = await asyncpg.connect(database_url)
    out: list[CallCheck] = []
    try:
        for c in calls:
            if not c.call_id:
                continue
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                if await conn.fetchval("SELECT status FROM calls WHERE id = $1", c.call_id) == "ended":
                    break
                await asyncio.sleep(0.5)
            rows = await conn.fetch("SELECT turn_id, speaker FROM call_turns WHERE call_id = $1", c.call_id)
            callers = [r["turn_id"] for r in rows if r["speaker"] == "caller"]
            agents = [r["turn_id"] for r in rows if r["speaker"] == "agent"]
            dup = sum(1 for t in set(callers) if agents.count(t) > 1)
            out.append(CallCheck(c.call_id, len(c.turns) or asked, len(callers), len(agents), dup))
    finally:
        await conn.close()
    return out


async def chaos(target: Target, killer: Killer, questions: list[Utterance], *, calls: int, concurrency: int,
                turns: int, t: Timeouts, database_url: str, late_ms: float = 3000.0,
                progress: Callable[[str], None] = lambda _: None) -> ChaosReport:
    report = ChaosReport(late_ms=late_ms)
    stop = asyncio.Event()
    killing = asyncio.create_task(killer.run(stop))
    sem = asyncio.Semaphore(concurrency)

    spans: dict[int, tuple[float, float]] = {}

    async def one(k: int) -> CallResult:
        async with sem:
            qs = [questions[(k + j) % len(questions)] for j in range(turns)]
            started = time.time()
            r = await conversation(target, qs, t)
            spans[k] = (started, time.time())
            progress(f"call {k + 1}/{calls}: {'ok' if not r.error else r.error}")
            return r

    try:
        report.calls = list(await asyncio.gather(*(one(k) for k in range(calls))))
        report.spans = [spans[k] for k in range(calls)]
        if killer.order:
            progress(f"the calls ended before {len(killer.order)} scheduled kills: those were not made")
    finally:
        stop.set()
        await killing
    report.kills = killer.kills
    report.checks = await check_calls(database_url, report.calls, turns)
    return report


def markdown(rep: ChaosReport, args: dict[str, Any]) -> str:
    f = rep.figures()
    lines = [
        "# Chaos run" if args.get("kill_every", 1) > 0 else "# Chaos run, baseline (the same calls, nothing killed)",
        "",
        f"Settings: {json.dumps(args)}", "",
        "| figure | value | goal |", "|---|---|---|",
        f"| calls completed | {f['calls_completed']} / {f['calls']} | all |",
        f"| turns affected (no reply, or later than {rep.late_ms:.0f} ms) | {f['turns_affected']} / {f['turns']} | "
        "≤ 1 per call per kill |",
        f"| most affected turns in one call | {f['max_affected_turns_in_a_call']} | |",
        f"| calls with more affected turns than kills during them | {f['calls_over_one_affected_turn_per_kill']} | 0 |",
        f"| duplicate turns | {f['duplicate_turns']} | 0 |",
        f"| transcripts lost / doubled (of {f['questions_asked']} questions) | {f['transcripts_lost']} / "
        f"{f['transcripts_doubled']} | 0 / 0 |",
        f"| kills | {f['kills']} | |",
        f"| voice-to-voice ms | {fmt(f['v2v_ms'])} | |", "",
        "| stage | kills | restart to ready ms |", "|---|---|---|",
    ]
    lines += [f"| {s} | {v['kills']} | {fmt(v['restart_to_ready_ms'])} |" for s, v in f["stages"].items()]
    return "\n".join(lines) + "\n"


def fmt(s: dict[str, Any]) -> str:
    if not s or not s.get("n"):
        return "n=0"
    p95 = f"{s['p95']:.0f}" if s.get("p95") is not None else "— (n too small)"
    return f"p50 {s['p50']:.0f} / p95 {p95} (n={s['n']})"


async def main_async(a: argparse.Namespace) -> int:
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    voice = Voice()
    questions = [voice.utter(q) for q in QUESTIONS]
    target = Target("platform", a.ingress, to=a.number)
    agent = BenchAgent(a.nats, a.number) if a.nats else None  # the number reaches an agent of the bench's own
    if agent is not None:
        await agent.install()
    probe = await conversation(target, [], Timeouts())
    if probe.error:
        raise SystemExit(f"cannot hold a call at {a.ingress} (number {a.number}): {probe.error}")
    killer = Killer(replica_ports(a.replicas), a.kill_every, seed=a.seed)

    def progress(msg: str) -> None:
        print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    try:
        rep = await chaos(target, killer, questions, calls=a.calls, concurrency=a.concurrency, turns=a.turns,
                          t=Timeouts(), database_url=a.database_url, late_ms=a.late_ms, progress=progress)
    finally:
        if agent is not None:
            await agent.remove()
    settings = {k: v for k, v in vars(a).items() if k not in ("database_url", "nats")}
    settings["machine"] = {"git": git_commit(), "cores": os.cpu_count(),
                           "load_average_at_start": load_at_start,
                           "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
    RESULTS.mkdir(exist_ok=True)
    name = "latest-chaos" if a.kill_every > 0 else "latest-chaos-baseline"
    (RESULTS / f"{name}.md").write_text(markdown(rep, settings))
    (RESULTS / f"{name}.json").write_text(json.dumps({"figures": rep.figures(), "kills": [asdict(k) for k in
                                                     rep.kills], "settings": settings}, indent=1))
    print(markdown(rep, settings))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ingress", default="http://127.0.0.1:8080")
    ap.add_argument("--number", default="+15550100", help="the number the callers dial")
    ap.add_argument("--nats", default="", help="the platform's NATS: a bench agent is put on --number for the run "
                    "(make run prints it; without it the number must reach an agent already)")
    ap.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""),
                    help="where analytics stores calls (make run prints it)")
    ap.add_argument("--replicas", type=int, default=2, help="STAGE_REPLICAS of the running make run")
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--kill-every", type=float, default=5.0,
                    help="seconds between kills; 0: the baseline, the same calls with nothing killed "
                    "(written to latest-chaos-baseline.*)")
    ap.add_argument("--late-ms", type=float, default=3000.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if not a.database_url:
        ap.error("--database-url (or DATABASE_URL) is needed to check what was stored")
    return asyncio.run(main_async(a))


if __name__ == "__main__":
    raise SystemExit(main())
