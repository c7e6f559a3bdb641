"""`make bench-intents`: voice-to-voice of a cached answer (an intent matched, no LLM request) beside the LLM path,
in the same calls, against a running platform.

    make run LLM_PROFILE=fast          # in another terminal
    make bench-intents BENCH_ARGS="--nats nats://127.0.0.1:14222"

The bench puts an agent of its own on ``--number`` (the default agent's settings plus two intents with cached
answers, hours and address) and makes ``--calls`` phone calls (the Twilio caller of ``make bench``); each call asks
questions that paraphrase an intent and questions that do not, alternating. A turn counts as cached when its
``turn.completed`` says the intent answered it from the cache (else it is reported as a miss); the others went to
the LLM. The report (p50/p95 with n for each path, hits and misses) goes to
``bench/results/latest-intents.{md,json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import nats
from voice_schemas import parse
from voice_schemas.agent import Intent
from voice_schemas.events import TurnCompleted

from .agent import BenchAgent
from .calls import Target, Timeouts, conversation
from .machine import cpu_model, git_commit
from .speech import Voice
from .stats import summary

RESULTS = Path(__file__).resolve().parent / "results"
HOURS = "We are open from noon to ten at night, every day except Monday."
ADDRESS = "We are at 12 Harbour Street, next to the ferry terminal."
INTENTS = [
    Intent(name="opening_hours", answer=HOURS,
           examples=["What time do you open?", "When are you open?", "What are your opening hours?",
                     "Are you open today?", "How late are you open tonight?"]),
    Intent(name="address", answer=ADDRESS,
           examples=["Where are you?", "What is your address?", "How do I find you?", "Where is the restaurant?"]),
]
# paraphrases not among the examples (the cached path), and questions no intent covers (the LLM path)
CACHED_QUESTIONS = ["Until what time are you open this evening?", "Could you tell me your address please?",
                    "What hours are you open on Saturday?", "Where exactly is your restaurant located?"]
LLM_QUESTIONS = ["Do you have anything for someone who does not eat meat?", "Can I bring my dog along with me?",
                 "Is it possible to pay with a credit card?", "Do you make birthday cakes for parties?"]


class Completed:
    """turn.completed of the bench's calls, by call id (the intent that answered a turn, if any)."""

    def __init__(self) -> None:
        self.by_call: dict[str, list[TurnCompleted]] = {}

    async def on_msg(self, msg: Any) -> None:
        try:
            env = parse(msg.data)
        except Exception:
            return
        if isinstance(env.data, TurnCompleted):
            self.by_call.setdefault(env.call_id, []).append(env.data)


async def main_async(a: argparse.Namespace) -> int:
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    agent = BenchAgent(a.nats, a.number)
    # an agent of its own, with a version no replica has cached (agent versions are immutable: brain keeps the
    # ones it read, so the plain bench agent's version 1 must not be reused with intents added)
    agent.agent = agent.agent.model_copy(update={"id": "bench-intents", "version": int(time.time()),
                                                 "intents": INTENTS})
    agent.route = agent.route.model_copy(update={"agent_id": "bench-intents"})
    await agent.install()
    nc = await nats.connect(a.nats, name="bench-intents")
    completed = Completed()
    await nc.subscribe(TurnCompleted.subject_pattern(), cb=completed.on_msg)
    voice = Voice()
    target = Target("platform", a.ingress, to=a.number)
    cached_ms: list[float] = []
    llm_ms: list[float] = []
    hits = misses = errors = 0
    try:
        for k in range(a.calls):
            questions = []
            for i in range(a.turns):
                pool = CACHED_QUESTIONS if i % 2 == 0 else LLM_QUESTIONS
                questions.append(voice.utter(pool[(k + i // 2) % len(pool)]))
            res = await conversation(target, questions, Timeouts())
            await asyncio.sleep(1.0)  # the last turn.completed arrives once the reply has played
            turns = {t.index: t for t in res.turns}
            # the call's caller turns, in the order they completed: turn i answered question i
            done = [c for c in completed.by_call.get(res.call_id, []) if (c.caller_text or "").strip()]
            for i, q in enumerate(questions):
                tr = turns.get(i)
                if tr is None or tr.v2v_ms is None:
                    errors += 1
                    continue
                c = done[i] if len(done) == len(questions) else None
                hit = c is not None and c.intent is not None and c.intent.cached
                if q.text in CACHED_QUESTIONS and hit:
                    hits += 1
                    cached_ms.append(tr.v2v_ms)
                elif q.text in CACHED_QUESTIONS:
                    misses += 1
                elif c is not None and c.intent is not None and c.intent.cached:
                    misses += 1  # an LLM question answered from the cache: a false match, kept out of both rows
                else:
                    llm_ms.append(tr.v2v_ms)
            print(f"[intents {time.strftime('%H:%M:%S')}] call {k + 1}/{a.calls}: {res.error or 'ok'}", flush=True)
    finally:
        await agent.remove()
        await nc.close()
    figures = {"cached_v2v_ms": summary(cached_ms), "llm_v2v_ms": summary(llm_ms), "cache_hits": hits,
               "cache_misses": misses, "turns_without_reply": errors}
    settings = {"calls": a.calls, "turns": a.turns, "number": a.number, "cpu": cpu_model(), "cores": os.cpu_count(),
                "git": git_commit(), "load_average_at_start": load_at_start,
                "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest-intents.json").write_text(json.dumps({"figures": figures, "settings": settings}, indent=1))
    md = markdown(figures, settings)
    (RESULTS / "latest-intents.md").write_text(md)
    print(md)
    return 0


def _fmt(s: dict[str, Any]) -> str:
    if not s.get("n"):
        return "n=0"
    p95 = f"{s['p95']:.0f}" if s.get("p95") is not None else "n/a (n too small)"
    return f"p50 {s['p50']:.0f} / p95 {p95} (n={s['n']})"


def markdown(f: dict[str, Any], settings: dict[str, Any]) -> str:
    return "\n".join([
        "# Cached answers beside the LLM path", "",
        f"Settings: {json.dumps(settings)}", "",
        "| path | voice-to-voice ms |", "|---|---|",
        f"| intent matched, cached answer (no LLM request) | {_fmt(f['cached_v2v_ms'])} |",
        f"| no intent: the LLM | {_fmt(f['llm_v2v_ms'])} |", "",
        f"Intent questions answered from the cache: {f['cache_hits']}; misses (an intent question not matched, or "
        f"another question matched; left out of both rows): {f['cache_misses']}; turns without a reply: "
        f"{f['turns_without_reply']}.", "",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.intents", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ingress", default="http://127.0.0.1:8080")
    ap.add_argument("--number", default="+15550166", help="the number the bench's agent is put on")
    ap.add_argument("--nats", required=True, help="the platform's NATS (make run prints it)")
    ap.add_argument("--calls", type=int, default=8)
    ap.add_argument("--turns", type=int, default=4)
    return asyncio.run(main_async(ap.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
