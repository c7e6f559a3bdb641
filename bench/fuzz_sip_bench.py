"""`make bench-fuzz-sip`: fuzzed SIP (bench/fuzz_sip.py) at the platform's SIP port during a real SIP call.

    make bench-fuzz-sip                                     # 100,000 SIP messages
    make bench-fuzz-sip BENCH_ARGS="--messages 5000"        # a short run

It starts what it needs itself, on free ports (as `make bench-fuzz`): an embedded NATS, the embedded LLM (or
LLM_BASE_URL) and the data plane with SIP on 127.0.0.1 (UDP and TCP, default limits: 20 requests a second per
source, 100 calls). A real SIP caller (tests/e2e/sip_caller.py: INVITE, ACK, RTP both ways) asks the agent questions,
first a few turns without fuzz (the baseline), then while ``python -m bench.fuzz_sip load`` (a process of its own)
sends the messages, until they are all sent. Per turn: the answer's delay after the question and the gaps in the
RTP the caller receives. Ingress' RSS is sampled every second, every service's log is searched for errors, every
process must be alive, and the call's BYE must get a 200 at the end. The report goes to
bench/results/fuzz-sip-<time>.json / .md and latest-fuzz-sip.md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from voice_devstack.stack import free_port

from . import stats
from .agent import BenchAgent
from .fuzz import ROOT, STACK, Stack, log_errors, quiet_agent, rss_sampler
from .machine import cpu_model
from .speech import QUESTIONS, Voice

RESULTS = Path(__file__).resolve().parent / "results"
NUMBER, FUZZ_NUMBER = "+15550100", "+15550190"
GAP_MS = 100


def log(msg: str) -> None:
    print(f"[bench-fuzz-sip {time.strftime('%H:%M:%S')}] {msg}", flush=True)


async def turn(caller: Any, ulaw: bytes) -> dict[str, Any]:
    """One question: the answer's delay after its last frame, and the gaps in the RTP received meanwhile."""
    caller.say(ulaw)
    await asyncio.sleep(len(ulaw) / 8000)  # sent at 20 ms pace from the next tick on
    spoke_at = time.monotonic() + 0.04
    answered = await caller.wait_for_audio(spoke_at, 30)
    if answered is not None:
        await caller.wait_for_silence(1.5, 40)
    until = time.monotonic()
    packets = [t for t, _ in caller.received if spoke_at < t <= until]
    gaps = [round((b - a) * 1000, 1) for a, b in itertools.pairwise(packets)]
    return {"answer_ms": round((answered - spoke_at) * 1000) if answered else None, "packets": len(packets),
            "gaps_over_100ms": sum(1 for g in gaps if g > GAP_MS), "max_gap_ms": max(gaps, default=None)}


def summary(turns: list[dict[str, Any]]) -> dict[str, Any]:
    answered = [t for t in turns if t["answer_ms"] is not None]
    return {"turns": len(turns), "answered": len(answered),
            "answer_ms": stats.summary([t["answer_ms"] for t in answered]),
            "packets": sum(t["packets"] for t in turns),
            "gaps_over_100ms": sum(t["gaps_over_100ms"] for t in turns),
            "max_gap_ms": max((t["max_gap_ms"] for t in turns if t["max_gap_ms"] is not None), default=None)}


async def sip_phase(stack: Stack, sip_port: int, args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from .sip_caller import SipCaller

    agent = BenchAgent(stack.nats_url, NUMBER)
    await agent.install()
    await quiet_agent(stack.nats_url, FUZZ_NUMBER)
    voice = Voice()
    questions = [voice.utter(q).ulaw for q in QUESTIONS]
    caller = SipCaller("127.0.0.1", sip_port, NUMBER)
    final = await caller.dial()
    if final.code != 200:
        raise RuntimeError(f"the real call was refused: {final.code} {final.phrase}")
    greeted = await caller.wait_for_audio(0, 60)
    if greeted is not None:
        await caller.wait_for_silence(1.5, 30)
    rss: list[int] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(rss_sampler(stack.procs["ingress"].pid, rss, stop))
    baseline: list[dict[str, Any]] = []
    fuzzed: list[dict[str, Any]] = []
    counts_file = stack.root / "fuzz-sip-counts.json"
    bye: int | None = None
    try:
        log(f"baseline: {args.baseline_turns} turns without fuzz")
        for i in range(args.baseline_turns):
            baseline.append(await turn(caller, questions[i % len(questions)]))
        rss_start = rss[-1] if rss else None
        cmd = [sys.executable, "-m", "bench.fuzz_sip", "load", "--host", "127.0.0.1", "--udp-port", str(sip_port),
               "--tcp-port", str(sip_port), "--messages", str(args.messages), "--seed", str(args.seed),
               "--sources", str(args.sources), "--concurrency", str(args.concurrency), "--rate", str(args.rate),
               "--bind-number", FUZZ_NUMBER, "--out", str(counts_file)]
        log(f"fuzz: {args.messages} SIP messages at 127.0.0.1:{sip_port}, at most {args.rate:g}/s, during the call")
        t0 = time.monotonic()
        fuzzer = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, stdout=asyncio.subprocess.DEVNULL)
        i = 0
        while fuzzer.returncode is None:
            fuzzed.append(await turn(caller, questions[i % len(questions)]))
            i += 1
        await fuzzer.wait()
        fuzz_s = round(time.monotonic() - t0, 1)
        await asyncio.sleep(2)
        bye = await caller.hangup()
    finally:
        stop.set()
        await sampler
        if bye is None:
            await caller.hangup()
        await agent.remove()
    counts = json.loads(counts_file.read_text()) if counts_file.exists() else {}
    mib = 2**20
    return {
        "call": {"bye_status": bye, "baseline": summary(baseline), "during_fuzz": summary(fuzzed),
                 "turns_detail": {"baseline": baseline, "during_fuzz": fuzzed}},
        "fuzz": {**counts, "wall_s": fuzz_s, "exit_code": fuzzer.returncode},
        "ingress_rss_mib": {"start": round(rss_start / mib, 1) if rss_start else None,
                            "peak": round(max(rss) / mib, 1) if rss else None,
                            "end": round(rss[-1] / mib, 1) if rss else None, "samples": len(rss)},
        "ingress_log_errors": dict(log_errors(stack.log("ingress"))),
        "log_errors": {n: dict(log_errors(stack.log(n))) for n in STACK if n != "ingress"},
        "dead_processes": stack.dead(),
    }


def markdown(rep: dict[str, Any]) -> str:
    m, s = rep["machine"], rep["sip"]
    f, c = s["fuzz"], s["call"]
    server_errors = {k: v for k, v in (f.get("responses") or {}).items()
                     if k.startswith("5") and k not in ("503", "500 cseq-out-of-order")}
    lines = [
        "# Fuzzed SIP (`make bench-fuzz-sip`)", "",
        f"Run {rep['started_at']}, {rep['duration_s']} s; machine: {m['cpu']} ({m['cores']} cores), load average at "
        f"start {rep['load_average_at_start']}, at end {rep['load_average_at_end']}.", "",
        "## SIP at ingress's UDP and TCP port, during a real SIP call", "",
        f"- Sent: **{f.get('messages')} SIP messages** in {f.get('wall_s')} s: {f.get('datagrams')} datagrams "
        f"({f.get('datagrams_refused')} refused by the local kernel), {f.get('tcp_connections')} TCP connections "
        f"({f.get('tcp_refused')} refused), {f.get('dialogs_answered')} dialogs set up and hit "
        f"({f.get('dialogs_unanswered')} not answered), {f.get('rtp_packets')} RTP packets of noise.",
        f"- Cases: {f.get('cases')}.",
        f"- Responses: {f.get('responses')}; server errors (a 5xx other than 503 and RFC 3261's 500 for a CSeq "
        f"going backwards): **{sum(server_errors.values())}**; TCP endings: {f.get('tcp_endings')}; client-side "
        f"errors: {f.get('client_errors') or 'none'}.",
        f"- Crashes: **{len(s['dead_processes'])}** (processes gone: {s['dead_processes'] or 'none'}); ingress log "
        f"errors: {s['ingress_log_errors'] or 'none'}; other services' errors: "
        f"{ {k: v for k, v in s['log_errors'].items() if v} or 'none'}.",
        f"- Ingress RSS (MiB, n={s['ingress_rss_mib']['samples']} samples, 1/s): start {s['ingress_rss_mib']['start']}"
        f", peak {s['ingress_rss_mib']['peak']}, end {s['ingress_rss_mib']['end']}.",
        f"- The real call: BYE answered **{c['bye_status']}** at the end.", "",
        "| the real call | turns (answered) | answer p50 / p95 | RTP packets | gaps > 100 ms | worst gap |",
        "|---|---|---|---|---|---|",
    ]
    for name, t in (("baseline, no fuzz", c["baseline"]), ("during the fuzz", c["during_fuzz"])):
        a = t["answer_ms"] or {}
        lines.append(f"| {name} | {t['turns']} ({t['answered']}) | {a.get('p50')} / {a.get('p95') or '-'} ms "
                     f"(n={a.get('n', 0)}) | {t['packets']} | {t['gaps_over_100ms']} | {t['max_gap_ms']} ms |")
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.monotonic()
    rep: dict[str, Any] = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
                           "config": {k: str(v) for k, v in vars(args).items()},
                           "machine": {"cpu": cpu_model(), "cores": os.cpu_count()}}
    sip_port = free_port()
    stack = Stack(Path(tempfile.mkdtemp(prefix="voice-fuzz-sip-")),
                  ingress_env={"SIP_ENABLED": "true", "SIP_BIND_HOST": "127.0.0.1", "SIP_UDP_PORT": str(sip_port),
                               "SIP_TCP_PORT": str(sip_port)})
    log(f"starting NATS, the LLM and {', '.join(STACK)} with SIP on 127.0.0.1:{sip_port} (logs in {stack.root})")
    try:
        stack.start()
        rep["sip"] = await sip_phase(stack, sip_port, args)
    finally:
        stack.stop()
    rep["duration_s"] = round(time.monotonic() - t0, 1)
    rep["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return rep


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.fuzz_sip", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=100_000, help="SIP messages to send")
    ap.add_argument("--rate", type=float, default=2000.0, help="messages per second at most (0: unpaced)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--sources", type=int, default=64, help="loopback source addresses the fuzz sends from")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--baseline-turns", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    rep = asyncio.run(main_async(args))
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    md = markdown(rep)
    (args.out / f"fuzz-sip-{stamp}.json").write_text(json.dumps(rep, indent=2, default=str))
    (args.out / f"fuzz-sip-{stamp}.md").write_text(md)
    (args.out / "latest-fuzz-sip.md").write_text(md)
    print(md)
