"""The SIP phase of `make bench`: phone calls over SIP (INVITE to ingress's SIP port, the caller's speech as μ-law
RTP at 20 ms pace, the agent's audio received as RTP), one at a time.

Voice-to-voice is measured at the caller: from the moment the last packet of the question left the caller to the
first packet of the agent's reply that carries sound (mean |sample| above a speech level: the platform keeps RTP
flowing with silence between replies, so the first packet after the question is not the reply). A reply must
begin within ``reply_s``; the caller then waits for ``quiet_s`` of silence before the next question.
"""

from __future__ import annotations

import time
from typing import Any

from .sip_caller import SipCaller
from .speech import Utterance
from .stats import summary


async def sip_call(host: str, port: int, number: str, questions: list[Utterance], *, greeting_s: float = 30.0,
                   reply_s: float = 30.0, quiet_s: float = 1.2) -> dict[str, Any]:
    c = SipCaller(host, port, number)
    out: dict[str, Any] = {"v2v_ms": [], "greeting_ms": None, "error": None, "turns_without_reply": 0}
    dialled = time.monotonic()
    try:
        final = await c.dial()
        if final.code != 200:
            out["error"] = f"INVITE answered {final.code} {final.phrase}"
            return out
        first = await c.wait_for_audio(0, greeting_s)
        if first is None:
            out["error"] = "no greeting"
            return out
        out["greeting_ms"] = round((first - dialled) * 1000, 1)
        await c.wait_for_silence(quiet_s, 60)
        for q in questions:
            c.say(q.ulaw)
            await c.speech_sent.wait()
            ended = c.speech_ended_at
            assert ended is not None
            heard = await c.wait_for_audio(ended, reply_s)
            if heard is None:
                out["turns_without_reply"] += 1
                continue
            out["v2v_ms"].append(round((heard - ended) * 1000, 1))
            await c.wait_for_silence(quiet_s, 60)
    except Exception as e:  # a call that fails is reported, the phase goes on
        out["error"] = f"{type(e).__name__}: {e}"[:300]
    finally:
        await c.hangup()
    return out


async def sip_phase(host: str, port: int, number: str, questions: list[Utterance], *, calls: int,
                    turns: int) -> dict[str, Any]:
    v2v: list[float] = []
    greetings: list[float] = []
    failed: list[str] = []
    without = 0
    for k in range(calls):
        qs = [questions[(k * turns + i) % len(questions)] for i in range(turns)]
        r = await sip_call(host, port, number, qs)
        v2v += r["v2v_ms"]
        without += r["turns_without_reply"]
        if r["greeting_ms"] is not None:
            greetings.append(r["greeting_ms"])
        if r["error"]:
            failed.append(r["error"])
    return {"calls": calls, "turns": calls * turns, "calls_failed": len(failed), "errors": failed[:5],
            "turns_without_reply": without, "voice_to_voice_ms": summary(v2v), "greeting_ms": summary(greetings),
            "target": f"{host}:{port}", "number": number}
