"""`make bench`: drive a running platform as phone callers would and write a report under bench/results/.

    make run                          # in another terminal: the platform on its default ports
    make bench                        # voice-to-voice, greeting, barge-in, bus overhead, concurrency sweep
    make bench-soak BENCH_ARGS="--minutes 10"
    make bench-peer                   # the same caller against a stock Pipecat pipeline, alternating runs

Every call is a fake Twilio (bench/twilio_caller.py): signed webhook, Media Streams over a real WebSocket,
real-time 20 ms μ-law frames (silence between utterances), marks echoed when the audio has "played".
Caller speech is made with piper. See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
from voice_devstack.stack import first_admin_env

from . import looplag, natsinfo, procs, report
from .agent import BenchAgent
from .browser import Credentials, browser_phase
from .bus import bus_overhead
from .calls import (
    BargeInResult,
    CallResult,
    Target,
    Timeouts,
    barge_in_session,
    concurrent_conversations,
    conversation,
)
from .eot import KINDS, eot_phase
from .events import PlatformEvents
from .machine import facts
from .sip_calls import sip_phase
from .soak import soak
from .speech import INTERRUPTIONS, QUESTIONS, Utterance, Voice

RESULTS = Path(__file__).resolve().parent / "results"
PHASES = ("v2v", "eot", "barge_in", "bus", "sweep", "browser", "sip")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_argument_group("target")
    g.add_argument("--url", default=os.environ.get("BENCH_URL", "http://127.0.0.1:8080"),
                   help="ingress base URL (Twilio webhook /twilio/voice, WS /twilio/media)")
    g.add_argument("--nats", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    g.add_argument("--auth-token", default=os.environ.get("TWILIO_AUTH_TOKEN"),
                   help="Twilio auth token the platform checks signatures with (unset: no signatures)")
    g.add_argument("--public-base-url", default=os.environ.get("PUBLIC_BASE_URL"),
                   help="the platform's PUBLIC_BASE_URL (signatures are computed over it)")
    g.add_argument("--to", default="+15550100", help="called number")
    g.add_argument("--configure-agent", choices=("auto", "yes", "no"), default="auto",
                   help="auto: if --to reaches no agent, configure a bench agent + route in KV for the run")
    g.add_argument("--llm-base-url", default=os.environ.get("LLM_BASE_URL", "http://127.0.0.1:8090/v1"))
    g.add_argument("--llm-model", default=os.environ.get("LLM_MODEL", "smollm2"))
    g.add_argument("--ports", default="",
                   help="service=port overrides for finding processes, e.g. ingress=9080,stt=9082")
    g.add_argument("--console-url", default=os.environ.get("BENCH_CONSOLE_URL", "http://127.0.0.1:8000"),
                   help="control-api's web console (the browser phase's calls)")
    g.add_argument("--console-key",
                   default=os.environ.get("BENCH_CONSOLE_KEY") or os.environ.get("BOOTSTRAP_ADMIN_KEY"),
                   help="API key the browser signs in with (else the first admin's email and password)")
    g.add_argument("--console-email", default=None, help="default: BOOTSTRAP_ADMIN_EMAIL or make run's first admin")
    g.add_argument("--console-password", default=os.environ.get("BOOTSTRAP_ADMIN_PASSWORD"),
                   help="default: the first admin's password file that make run wrote")
    g.add_argument("--browser-agent", default=os.environ.get("DEFAULT_AGENT_ID", "default-agent"),
                   help="agent the browser calls (it must exist in control-api)")
    g.add_argument("--chromium", default=None, help="Chromium binary (default: CHROMIUM_PATH, or chromium on PATH)")
    g = ap.add_argument_group("what to run (default: v2v, barge_in, bus, sweep, browser, sip)")
    g.add_argument("--only", default="", help=f"comma list of {', '.join(PHASES)}")
    g.add_argument("--skip", default="", help="comma list of phases to leave out")
    g.add_argument("--soak", action="store_true", help="run the soak only (make bench-soak)")
    g.add_argument("--peer", action="store_true", help="run the Pipecat comparison only (make bench-peer)")
    g = ap.add_argument_group("sizes")
    g.add_argument("--warmup", type=int, default=1, help="uncounted warm-up calls (one question each) first")
    g.add_argument("--calls", type=int, default=4, help="voice-to-voice: calls, one at a time")
    g.add_argument("--turns", type=int, default=5, help="voice-to-voice: questions per call")
    g.add_argument("--eot-rounds", type=int, default=2,
                   help=f"end-of-turn phase: times each of its {sum(len(v) for v in KINDS.values())} "
                        "utterances is said")
    g.add_argument("--barge-in-trials", type=int, default=4)
    g.add_argument("--bus-seconds", type=float, default=10.0)
    g.add_argument("--bus-streams", type=int, default=40, help="audio streams under load (50 frames/s each)")
    g.add_argument("--bus-events-per-s", type=float, default=100.0)
    g.add_argument("--sweep", default="2,5,10,20", help="concurrency steps after 1 (the voice-to-voice phase)")
    g.add_argument("--sweep-max", type=int, default=20, help="cap on concurrent calls")
    g.add_argument("--sweep-turns", type=int, default=2, help="questions per call in each sweep step (at least)")
    g.add_argument("--sweep-min-samples", type=int, default=20,
                   help="more questions per call at small steps so each step has this many turns "
                        "(p95 is reported from 20 on; below, the knee compares p50)")
    g.add_argument("--minutes", type=float, default=5.0, help="soak duration")
    g.add_argument("--soak-concurrency", type=int, default=2)
    g.add_argument("--soak-turns", type=int, default=2)
    g.add_argument("--peer-port", type=int, default=8790)
    g.add_argument("--peer-rounds", type=int, default=2, help="alternations (ours, pipecat) of --peer-turns")
    g.add_argument("--peer-turns", type=int, default=5)
    g.add_argument("--peer-barge-in-trials", type=int, default=2)
    g.add_argument("--browser-calls", type=int, default=1, help="browser phase: calls, one at a time")
    g.add_argument("--browser-turns", type=int, default=5, help="browser phase: questions per call")
    g.add_argument("--browser-lead-s", type=float, default=12.0,
                   help="browser phase: silence before the first question (connecting and the greeting)")
    g.add_argument("--browser-gap-s", type=float, default=15.0,
                   help="browser phase: silence after each question (the reply)")
    g.add_argument("--sip", default=os.environ.get("BENCH_SIP", "127.0.0.1:5060"),
                   help="sip phase: ingress's SIP address (make run takes SIP calls on 127.0.0.1:5060)")
    g.add_argument("--sip-calls", type=int, default=2, help="sip phase: calls, one at a time")
    g.add_argument("--sip-turns", type=int, default=5, help="sip phase: questions per call")
    g = ap.add_argument_group("timing")
    g.add_argument("--quiet-s", type=float, default=1.5, help="agent silence that means the reply is over")
    g.add_argument("--reply-timeout-s", type=float, default=30.0)
    g.add_argument("--max-reply-s", type=float, default=60.0)
    g.add_argument("--out", type=Path, default=RESULTS)
    return ap.parse_args(argv)


def _ports(spec: str) -> dict[str, int]:
    ports = dict(procs.DEFAULT_PORTS)
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, port = item.partition("=")
        ports[name.strip()] = int(port)
    return ports


def _phases(args: argparse.Namespace) -> list[str]:
    chosen = [p.strip() for p in args.only.split(",") if p.strip()] or list(PHASES)
    skip = {p.strip() for p in args.skip.split(",") if p.strip()}
    bad = (set(chosen) | skip) - set(PHASES)
    if bad:
        raise SystemExit(f"unknown phase(s) {sorted(bad)}; phases are {', '.join(PHASES)}")
    return [p for p in chosen if p not in skip]


async def _ready(url: str, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return True
            await asyncio.sleep(0.3)
    return False


def _console_credentials(args: argparse.Namespace) -> Credentials:
    """The browser signs in with --console-key, else the first admin's email and password (make run's file)."""
    if args.console_key:
        return Credentials(api_key=args.console_key)
    admin = first_admin_env(os.environ)
    password = args.console_password
    if not password and admin.get("BOOTSTRAP_ADMIN_PASSWORD_FILE"):
        with contextlib.suppress(OSError):
            password = Path(admin["BOOTSTRAP_ADMIN_PASSWORD_FILE"]).read_text().strip()
    return Credentials(email=args.console_email or admin["BOOTSTRAP_ADMIN_EMAIL"], password=password or None)


async def phase_browser(args: argparse.Namespace) -> dict[str, Any]:
    return await browser_phase(
        args.console_url, args.browser_agent, _console_credentials(args), QUESTIONS, calls=args.browser_calls,
        turns=args.browser_turns, lead_s=args.browser_lead_s, gap_s=args.browser_gap_s, chromium=args.chromium,
        reply_timeout_s=args.reply_timeout_s, log=log)


def _questions(voice: Voice) -> list[Utterance]:
    return [voice.utter(q) for q in QUESTIONS]


# --------------------------------------------------------------------------- phases
async def phase_v2v(target: Target, qs: list[Utterance], args: argparse.Namespace, t: Timeouts) -> list[CallResult]:
    calls: list[CallResult] = []
    for k in range(args.calls):
        mine = [qs[(k * args.turns + j) % len(qs)] for j in range(args.turns)]
        r = await conversation(target, mine, t)
        v2v = [tr.v2v_ms for tr in r.turns]
        log(f"  call {k + 1}/{args.calls} {r.call_id}: greeting {r.greeting_ms} ms, v2v {v2v}"
            + (f", error: {r.error}" if r.error else ""))
        calls.append(r)
    return calls


async def phase_barge_in(target: Target, voice: Voice, qs: list[Utterance], trials: int,
                         t: Timeouts) -> BargeInResult:
    inter = [voice.utter(x) for x in INTERRUPTIONS]
    r = await barge_in_session(target, qs, inter, voice.backchannel(), trials, t)
    log(f"  {len(r.trials)} interruptions: clear after {[x.onset_to_clear_ms for x in r.trials]} ms, caller stops "
        f"hearing after {[x.onset_to_stop_hearing_ms for x in r.trials]} ms (last frame received after "
        f"{[x.onset_to_last_frame_received_ms for x in r.trials]} ms); backchannels cleared "
        f"{[b.cleared for b in r.backchannels]}" + (f"; error: {r.error}" if r.error else ""))
    return r


async def phase_sweep(target: Target, qs: list[Utterance], args: argparse.Namespace, t: Timeouts,
                      base_calls: list[CallResult], pids: dict[str, int]) -> dict[str, Any]:
    base = report.call_figures(base_calls)
    base_v2v = base["voice_to_voice_ms"]
    steps = [{"calls": 1, **_step_figures(base_calls), "resources": base.get("resources", {})}]
    q0, base_ms, _ = report.knee_statistic(base_v2v, base_v2v)
    knee: dict[str, Any] = {"percentile": q0, "baseline_ms": base_ms, "baseline_n": base_v2v["n"],
                            "last_good_calls": 1, "first_bad_calls": None, "reason": None}
    if base_ms is None:
        knee["reason"] = "no one-call baseline (no turn got a reply): sweep skipped"
        return {"steps": steps, "knee": knee}
    levels = sorted({int(x) for x in args.sweep.split(",") if x.strip() and 1 < int(x) <= args.sweep_max})
    for n in levels:
        watch = procs.ProcessWatch(pids)
        idle = watch.snapshot()
        watch.start()
        turns = max(args.sweep_turns, -(-args.sweep_min_samples // n))
        calls = await concurrent_conversations(target, n, qs, turns, t, seed=n)
        await watch.stop()
        step = {"calls": n, **_step_figures(calls), "resources": watch.usage(n, idle)}
        steps.append(step)
        v2 = step["voice_to_voice_ms"]
        q, b_ms, s_ms = report.knee_statistic(base_v2v, v2)  # p95 where both have n >= 20, else p50
        step["knee_percentile"] = q
        cpu = step["resources"]["_total"]["cpu_pct"]
        log(f"  {n} calls: v2v p50 {v2['p50']} p95 {v2['p95']} ms (n={v2['n']}), "
            f"{step['turns_without_reply']}/{step['turns']} without reply, CPU {cpu}%")
        failed = step["turns"] == 0 or step["turns_without_reply"] > step["turns"] / 2
        if failed or s_ms is None or b_ms is None or s_ms >= 2 * b_ms:
            knee["first_bad_calls"] = n
            knee["reason"] = ("over half the turns got no reply" if failed or s_ms is None or b_ms is None
                              else f"{q} {s_ms:.0f} ms (n={v2['n']}) >= 2 x {b_ms:.0f} ms (n={base_v2v['n']})")
            break
        knee["last_good_calls"] = n
    if knee["first_bad_calls"] is None:
        knee["reason"] = f"stayed under 2 x baseline up to the cap ({max(levels, default=1)} calls)"
    return {"steps": steps, "knee": knee}


def _step_figures(calls: list[CallResult]) -> dict[str, Any]:
    f = report.call_figures(calls)
    return {k: f[k] for k in ("turns", "turns_without_reply", "voice_to_voice_ms", "voice_to_voice_audible_ms",
                              "greeting_ms", "playout", "calls_failed", "errors", "caller_send_lag_max_ms",
                              "stages_ms")}


# --------------------------------------------------------------------------- peer
def _spawn_peer(args: argparse.Namespace) -> subprocess.Popen[bytes]:
    with open(args.out / "pipecat-peer.log", "wb") as logf:
        return subprocess.Popen(
            [sys.executable, "-m", "bench.peer", "--port", str(args.peer_port), "--llm-base-url",
             args.llm_base_url, "--llm-model", args.llm_model],
            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)


async def _start_peer(args: argparse.Namespace) -> subprocess.Popen[bytes]:
    proc = _spawn_peer(args)
    if not await _ready(f"http://127.0.0.1:{args.peer_port}/readyz", 180) or proc.poll() is not None:
        _stop(proc)
        raise RuntimeError(f"the pipecat peer did not start; see {args.out / 'pipecat-peer.log'}")
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


async def phase_peer(ours: Target, voice: Voice, qs: list[Utterance], args: argparse.Namespace,
                     t: Timeouts) -> dict[str, Any]:
    peer = Target("pipecat", f"http://127.0.0.1:{args.peer_port}")
    proc = await _start_peer(args)
    runs: dict[str, list[CallResult]] = {"ours": [], "pipecat": []}
    barge: dict[str, list[BargeInResult]] = {"ours": [], "pipecat": []}
    try:
        for r in range(args.peer_rounds):
            order = [("ours", ours), ("pipecat", peer)] if r % 2 == 0 else [("pipecat", peer), ("ours", ours)]
            for name, target in order:
                mine = [qs[(r * args.peer_turns + j) % len(qs)] for j in range(args.peer_turns)]
                res = await conversation(target, mine, t)
                runs[name].append(res)
                log(f"  round {r + 1} {name}: greeting {res.greeting_ms} ms, v2v {[x.v2v_ms for x in res.turns]}"
                    + (f", error: {res.error}" if res.error else ""))
        if args.peer_barge_in_trials > 0:
            for name, target in (("ours", ours), ("pipecat", peer)):
                log(f"  barge-in on {name}")
                barge[name].append(await phase_barge_in(target, voice, qs, args.peer_barge_in_trials, t))
    finally:
        _stop(proc)
    out: dict[str, Any] = {}
    for name in ("ours", "pipecat"):
        f = report.call_figures(runs[name])
        b = report.barge_in_figures(barge[name]) if barge[name] else {}
        out[name] = {**f, **{k: b[k] for k in (
            "trials_during_agent_speech", "clear_received", "onset_to_clear_ms", "onset_to_caller_stops_hearing_ms",
            "onset_to_last_agent_frame_received_ms", "agent_audio_played_after_onset_ms",
            "agent_audio_received_after_onset_ms", "agent_audio_dropped_by_clear_ms", "resumed_after_a_pause",
            "new_reply_while_caller_spoke", "backchannel") if k in b}}
        out[name]["barge_in_detail"] = [asdict(x) for x in barge[name]]
    ratio: dict[str, Any] = {}
    for key, _label in report.PEER_FIGURES:
        o, p = out["ours"].get(key) or {}, out["pipecat"].get(key) or {}
        ratio[key] = {q: (round(p[q] / o[q], 2) if o.get(q) and p.get(q) is not None else None)
                      for q in ("p50", "p95")}
    out["ratio"] = ratio
    out["pipeline"] = ("FastAPIWebsocketTransport + TwilioFrameSerializer → VADProcessor(SileroVADAnalyzer) → "
                       "WhisperSTTService(tiny.en, int8) → LLMContextAggregatorPair (smart-turn v3 stop strategy) → "
                       "OpenAILLMService(same endpoint/model) → PiperTTSService(en_US-joe-medium, local) → output")
    out["notes"] = [
        "Everything in the Pipecat pipeline ran offline. PiperTTSService downloads voices by default; it is "
        "given a folder with the packaged voice under the expected name instead (no download).",
        "Silero runs in a VADProcessor ahead of the STT: Pipecat's segmented Whisper STT only transcribes between "
        "VAD frames it receives, and with the VAD inside the user aggregator (after the STT) it got none "
        "and never answered.",
        "The pipeline input rate is 16 kHz (Whisper reads 16 kHz; the Twilio serializer resamples); at 8 kHz "
        "Whisper heard nothing.",
        "Pipecat's voice and Whisper model are loaded once per process and shared across calls, like ours.",
    ]
    return out


# --------------------------------------------------------------------------- main
def _portable(p: Path) -> str:
    """A path as the report shows it: relative to the repository when inside it (no machine paths)."""
    try:
        return str(p.resolve().relative_to(Path(__file__).resolve().parents[1]))
    except ValueError:
        return p.name


async def _route(target: Target, args: argparse.Namespace, t: Timeouts) -> BenchAgent | None:
    """Make sure --to reaches an agent (see bench/agent.py); a short call (greeting only) proves it."""
    agent: BenchAgent | None = None
    if args.configure_agent == "yes":
        agent = BenchAgent(args.nats, args.to)
        await agent.install()
    probe = await conversation(target, [], t)
    if probe.error and "no stream in TwiML" in probe.error and agent is None and args.configure_agent == "auto":
        log(f"{args.to} reaches no agent: configuring a bench agent in KV for the run")
        agent = BenchAgent(args.nats, args.to)
        await agent.install()
        probe = await conversation(target, [], t)
    if probe.error:
        if agent is not None:
            await agent.remove()
        raise SystemExit(f"cannot hold a call with the platform at {args.url} (number {args.to}): {probe.error}")
    log(f"probe call: greeting after {probe.greeting_ms} ms")
    return agent


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.monotonic()
    me = asyncio.current_task()
    if me is not None:  # SIGTERM cancels like Ctrl-C, so the bench agent and the peer are cleaned up
        with contextlib.suppress(NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, me.cancel)
    args.out.mkdir(parents=True, exist_ok=True)
    if not await _ready(args.url.rstrip("/") + "/readyz", 10):
        raise SystemExit(f"the platform is not ready at {args.url} (start it with `make run`)")
    ports = _ports(args.ports)
    pids = procs.listening_pids(ports)
    missing = sorted(set(ports) - set(pids))
    nats_state = await natsinfo.state(args.nats)
    rep: dict[str, Any] = {
        "mode": "soak" if args.soak else "peer" if args.peer else "bench",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": {k: (_portable(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                   if k != "auth_token"},
        "machine": facts(pids, args.llm_base_url, nats_state.get("server_version")),
        "notes": [],
    }
    if missing:
        rep["notes"].append(f"no process found listening for {missing}: CPU/memory of those is not counted")
    log(f"platform at {args.url}; services found: {pids}")
    voice = Voice()
    qs = [voice.utter(q) for q in QUESTIONS]
    t = Timeouts(reply_s=args.reply_timeout_s, quiet_s=args.quiet_s, max_reply_s=args.max_reply_s)
    events = PlatformEvents()
    await events.start(args.nats)
    target = Target("platform", args.url, args.auth_token, args.public_base_url, args.to, events)
    agent: BenchAgent | None = None
    phases = [] if args.soak or args.peer else _phases(args)
    try:
        if args.soak or args.peer or set(phases) - {"browser"}:  # the browser phase calls through the console
            agent = await _route(target, args, t)
        if args.soak:
            log(f"soak: {args.minutes} min, {args.soak_concurrency} calls at a time")
            for _ in range(max(1, args.warmup)):
                await conversation(target, qs[:1], t)  # warm-up, not counted
            rep["soak"] = await soak(target, qs, args.minutes, args.soak_concurrency, args.soak_turns, t,
                                     procs.ProcessWatch(pids), args.nats)
        elif args.peer:
            log("peer comparison: stock Pipecat pipeline vs the platform, alternating")
            rep["peer"] = await phase_peer(target, voice, qs, args, t)
        else:
            for _ in range(args.warmup if set(phases) - {"browser"} else 0):
                w = await conversation(target, qs[-1:], t)
                log(f"warm-up call: greeting {w.greeting_ms} ms, v2v {[x.v2v_ms for x in w.turns]} (not counted)"
                    + (f", error: {w.error}" if w.error else ""))
            base_calls: list[CallResult] = []
            if "v2v" in phases or "sweep" in phases:
                log(f"voice-to-voice: {args.calls} calls x {args.turns} turns, one call at a time")
                watch = procs.ProcessWatch(pids)
                idle = watch.snapshot()
                lag_before = await looplag.scrape(ports)
                watch.start()
                try:
                    base_calls = await phase_v2v(target, qs, args, t)
                finally:
                    await watch.stop()
                rep["voice_to_voice"] = report.call_figures(base_calls)
                rep["voice_to_voice"]["loop_lag"] = looplag.figures(lag_before, await looplag.scrape(ports))
                rep["voice_to_voice"]["resources"] = watch.usage(1, idle)
                rep["voice_to_voice"]["calls_detail"] = [c.to_json() for c in base_calls]
            if "eot" in phases:
                log(f"end of turn: {len(KINDS)} kinds of utterance x {args.eot_rounds} rounds")
                rep["eot"] = await eot_phase(target, voice, t, rounds=args.eot_rounds)
                for kind, k in rep["eot"]["kinds"].items():
                    log(f"  {kind}: end of turn {k['end_of_turn_ms']}, early {k['early_start']['begun_early']}/"
                        f"{k['early_start']['turns']}" + (f", cut off {k['cut_off']}" if k["cut_off"] else ""))
            if "barge_in" in phases:
                log(f"barge-in: {args.barge_in_trials} interruptions and backchannels on one call")
                b = await phase_barge_in(target, voice, qs, args.barge_in_trials, t)
                rep["barge_in"] = report.barge_in_figures([b])
                rep["barge_in"]["detail"] = asdict(b)
            if "bus" in phases:
                log(f"bus overhead: {args.bus_streams} audio streams + {args.bus_events_per_s:.0f} events/s, "
                    f"{args.bus_seconds:.0f} s")
                try:
                    rep["bus"] = await bus_overhead(args.nats, args.bus_streams, args.bus_events_per_s,
                                                    args.bus_seconds)
                except Exception as e:
                    rep["notes"].append(f"bus overhead failed: {e}")
                    log(f"  failed: {e}")
            if "browser" in phases:
                log(f"browser: {args.browser_calls} call(s) x {args.browser_turns} turns from headless Chromium on "
                    f"{args.console_url}/agents/{args.browser_agent}/talk")
                rep["browser"] = await phase_browser(args)
                if rep["browser"].get("skipped"):
                    rep["notes"].append(f"browser phase skipped: {rep['browser']['skipped']}")
                    log(f"  skipped: {rep['browser']['skipped']}")
            if "sip" in phases:
                host, _, sip_port = args.sip.rpartition(":")
                log(f"sip: {args.sip_calls} call(s) x {args.sip_turns} turns over SIP to {args.sip} ({args.to})")
                rep["sip"] = await sip_phase(host or "127.0.0.1", int(sip_port), args.to, qs, calls=args.sip_calls,
                                             turns=args.sip_turns)
                if rep["sip"]["calls_failed"]:
                    log(f"  failed calls: {rep['sip']['errors']}")
            if "sweep" in phases and base_calls:
                log(f"concurrency sweep: {args.sweep} (cap {args.sweep_max})")
                rep["sweep"] = await phase_sweep(target, qs, args, t, base_calls, pids)
                rep["sweep"]["steps"][0]["resources"] = rep["voice_to_voice"]["resources"]
    finally:
        await events.stop()
        if agent is not None:
            await agent.remove()
            rep["notes"].append(agent.describe())
    rep["duration_s"] = round(time.monotonic() - t0, 1)
    rep["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return rep


def smoke(url: str, nats_url: str, *, auth_token: str | None = None, public_base_url: str | None = None,
          to: str = "+15550100", out: Path | None = None) -> dict[str, Any]:
    """One call, two turns: what `make test` runs (tests/e2e/test_bench_smoke.py)."""

    async def go() -> dict[str, Any]:
        voice = Voice()
        events = PlatformEvents()
        await events.start(nats_url)
        try:
            target = Target("platform", url, auth_token, public_base_url, to, events)
            r = await conversation(target, [voice.utter(QUESTIONS[0]), voice.utter(QUESTIONS[8])],
                                   Timeouts(quiet_s=1.2, max_reply_s=20))
        finally:
            await events.stop()
        return {"mode": "smoke", "voice_to_voice": report.call_figures([r]), "call": r.to_json()}

    rep = asyncio.run(go())
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "smoke.json").write_text(json.dumps(rep, indent=2, default=str))
    return rep


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rep = asyncio.run(main_async(args))
    j, md = report.write(rep, args.out)
    print(report.markdown(rep))
    suffix = "" if rep["mode"] == "bench" else f"-{rep['mode']}"
    log(f"report: {j} and {md} (also latest{suffix}.json / latest{suffix}.md)")


if __name__ == "__main__":
    main()
