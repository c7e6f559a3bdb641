"""Call scenarios driven through TwilioCaller: conversations (voice-to-voice, greeting) and barge-in trials.

Timing conventions (all on the caller's monotonic clock):
- voice-to-voice: last caller speech frame sent → first agent audio frame received after it
  (``v2v_audible_ms``: → first agent frame that is not near-silence, i.e. what the ear notices);
- greeting: the stream's ``start`` → first agent audio frame;
- barge-in: first frame of the interrupting speech sent → ``clear`` received, and → the last frame of
  the interrupted reply received (after it, the caller hears nothing of that reply).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

from .events import PlatformEvents
from .speech import Utterance
from .stats import ms, percentile
from .twilio_caller import Received, TwilioCaller

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

AUDIBLE_PEAK = 600  # int16 peak above which a received frame counts as audible agent speech


@dataclass
class Target:
    """Something a Twilio caller can dial: the platform's ingress or the pipecat peer."""

    name: str
    base_url: str
    auth_token: str | None = None
    public_base_url: str | None = None
    to: str = "+15550100"
    events: PlatformEvents | None = None  # per-stage breakdowns (the platform only)

    def caller(self) -> TwilioCaller:
        return TwilioCaller(self.base_url, auth_token=self.auth_token, public_base_url=self.public_base_url,
                            to=self.to)


@dataclass
class Timeouts:
    greeting_s: float = 20.0
    reply_s: float = 30.0  # speech end → first reply audio
    quiet_s: float = 1.5  # no agent audio this long = the reply has finished playing
    max_reply_s: float = 60.0  # a reply still playing after this is cut short by the bench


@dataclass
class TurnResult:
    call_id: str
    index: int
    question: str
    speech_s: float
    v2v_ms: float | None = None
    v2v_audible_ms: float | None = None
    reply_audio_s: float = 0.0
    reply_capped: bool = False
    stages: dict[str, float | None] | None = None  # from turn.completed
    platform_v2v_ms: float | None = None
    caller_text: str | None = None
    agent_text: str | None = None
    error: str | None = None


@dataclass
class Playout:
    frames: int = 0
    late_frames: int = 0  # inter-arrival gap > frame duration + tolerance
    underruns: int = 0  # audio ran dry mid-reply and resumed: an audible gap
    underrun_ms: float = 0.0
    jitter_ms: dict[str, float | None] = field(default_factory=dict)  # |gap - frame duration|
    odd_sizes: int = 0  # media payloads that are not whole 20 ms frames


@dataclass
class CallResult:
    target: str
    call_id: str = ""
    call_sid: str = ""  # the provider's (fake Twilio) id of the call
    greeting_ms: float | None = None
    turns: list[TurnResult] = field(default_factory=list)
    playout: Playout = field(default_factory=Playout)
    send_lag_max_ms: float = 0.0
    connected_s: float = 0.0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def audible(payload: bytes) -> bool:
    return bool(payload) and audioop.max(audioop.ulaw2lin(payload, 2), 2) > AUDIBLE_PEAK


def analyse_playout(received: list[Received], tolerance_s: float = 0.02, reply_gap_s: float = 1.0) -> Playout:
    """Inter-arrival jitter and audible underruns of agent audio, within replies (gaps > reply_gap_s split)."""
    p = Playout(frames=len(received))
    jitter: list[float] = []
    play_until = 0.0
    prev: Received | None = None
    for r in received:
        dur = len(r.payload) / 8000.0
        if len(r.payload) % 160:
            p.odd_sizes += 1
        if prev is not None and r.at - prev.at <= reply_gap_s:
            expected = len(prev.payload) / 8000.0
            gap = r.at - prev.at
            jitter.append(abs(gap - expected) * 1000)
            if gap > expected + tolerance_s:
                p.late_frames += 1
            if r.at > play_until + tolerance_s:  # the caller's buffer had run dry before this frame came
                p.underruns += 1
                p.underrun_ms += (r.at - play_until) * 1000
        play_until = max(play_until, r.at) + dur
        prev = r
    p.underrun_ms = round(p.underrun_ms, 1)
    p.jitter_ms = {"p50": _r(percentile(jitter, 50)), "p95": _r(percentile(jitter, 95)),
                   "p99": _r(percentile(jitter, 99)), "max": _r(max(jitter) if jitter else None)}
    return p


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


async def dial(c: TwilioCaller, attempts: int = 3, wait_s: float = 2.0) -> str:
    """The webhook, retried briefly when the number does not route (a KV resync may be under way)."""
    for i in range(attempts):
        try:
            return await c.dial()
        except RuntimeError as e:
            if "no stream in TwiML" not in str(e) or i == attempts - 1:
                raise
            await asyncio.sleep(wait_s)
    raise AssertionError("unreachable")


async def wait_audio_after(c: TwilioCaller, after: float, timeout: float) -> Received | None:
    """The first agent frame received after ``after``."""
    deadline = time.monotonic() + timeout
    i = 0
    while time.monotonic() < deadline and not c.closed:
        rec = c.received
        while i < len(rec):
            if rec[i].at > after:
                return rec[i]
            i += 1
        await asyncio.sleep(0.01)
    return None


def first_audible_after(c: TwilioCaller, after: float) -> Received | None:
    for r in c.received:
        if r.at > after and audible(r.payload):
            return r
    return None


async def wait_reply_done(c: TwilioCaller, since: float, t: Timeouts) -> tuple[float, bool]:
    """Wait until no agent audio came for quiet_s; (time of the last frame, capped?)."""
    deadline = since + t.max_reply_s
    while not c.closed:
        now = time.monotonic()
        last = c.received[-1].at if c.received else since
        if now - max(last, since) >= t.quiet_s:
            return max(last, since), False
        if now > deadline:
            return last, True
        await asyncio.sleep(0.05)
    return (c.received[-1].at if c.received else since), False


def reply_seconds(c: TwilioCaller, start: float, end: float) -> float:
    return sum(len(r.payload) for r in c.received if start <= r.at <= end) / 8000.0


async def conversation(target: Target, questions: list[Utterance], t: Timeouts,
                       hangup: bool = True) -> CallResult:
    """Dial, hear the greeting out, then ask each question and hear each reply out."""
    res = CallResult(target.name)
    c = target.caller()
    res.call_sid = c.call_sid
    try:
        res.call_id = await dial(c)
        await c.connect()
        first = await wait_audio_after(c, 0.0, t.greeting_s)
        if first is None:
            res.error = "no greeting"
            return res
        res.greeting_ms = ms(first.at - c.timings.stream_started)
        await wait_reply_done(c, first.at, t)
        for i, q in enumerate(questions):
            res.turns.append(await ask(c, target, res.call_id, i, q, t))
            if c.closed:
                res.error = f"stream closed by the far end (code {c.close_code})"
                break
    except Exception as e:
        res.error = f"{type(e).__name__}: {e}"[:300]
    finally:
        res.connected_s = round(time.monotonic() - c.timings.stream_started, 1) if c.timings.stream_started else 0.0
        res.send_lag_max_ms = round(c.timings.send_lag_max_s * 1000, 1)
        res.playout = analyse_playout(c.received)
        if hangup:
            await c.hangup()
        else:
            await c.close()
    return res


async def ask(c: TwilioCaller, target: Target, call_id: str, i: int, q: Utterance, t: Timeouts) -> TurnResult:
    tr = TurnResult(call_id, i, q.text, round(q.seconds, 2))
    _start, end = await c.speak(q.ulaw)
    end_wall = c.timings.speech_ended_wall[-1]
    first = await wait_audio_after(c, end, t.reply_s)
    if first is None:
        tr.error = "no reply"
        return tr
    tr.v2v_ms = ms(first.at - end)
    last, tr.reply_capped = await wait_reply_done(c, first.at, t)
    aud = first_audible_after(c, end)
    tr.v2v_audible_ms = ms(aud.at - end) if aud is not None and aud.at <= last else None
    tr.reply_audio_s = round(reply_seconds(c, first.at, last), 2)
    if target.events is not None:
        await _attach_breakdown(tr, target.events, call_id, end_wall)
    return tr


async def _attach_breakdown(tr: TurnResult, ev: PlatformEvents, call_id: str, end_wall: float,
                            wait_s: float = 3.0) -> None:
    """turn.completed comes once the reply has played (it names the heard text): wait for it briefly."""
    deadline = time.monotonic() + wait_s
    while True:
        te = ev.match(call_id, end_wall)
        if te is not None or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    if te is not None:
        tr.stages = te.latency
        tr.platform_v2v_ms = te.latency.get("voice_to_voice_ms")
        tr.caller_text, tr.agent_text = te.caller_text, te.agent_text[:200]


# --------------------------------------------------------------------------- barge-in
@dataclass
class BargeInTrial:
    onset_to_clear_ms: float | None = None
    onset_to_last_frame_ms: float | None = None
    onset_to_platform_barge_in_ms: float | None = None  # control.barge_in seen on the bus
    frames_after_clear: int = 0
    audio_heard_after_onset_ms: float = 0.0  # agent audio the caller got while (and after) speaking over it
    resumed_after_pause_ms: float | None = None  # agent audio came back after a silence > 0.25 s, at this time
    new_reply_while_speaking_ms: float = 0.0  # audio of a new reply that began before the caller had finished
    agent_was_speaking: bool = True
    platform_controls: list[tuple[str, float]] = field(default_factory=list)  # (kind, ms after onset), 3 s
    error: str | None = None


@dataclass
class BackchannelTrial:
    speech_ms: float
    cleared: bool = False  # the reply was cut off: a false barge-in
    paused_ms: float = 0.0  # longest silence in the agent's audio right after the backchannel
    continued: bool | None = None  # agent audio still came ≥ 1 s after the backchannel; None: reply ended
    platform_pause: bool = False  # control.pause published (suspected barge-in)
    agent_was_speaking: bool = True


@dataclass
class BargeInResult:
    target: str
    call_id: str = ""
    trials: list[BargeInTrial] = field(default_factory=list)
    backchannels: list[BackchannelTrial] = field(default_factory=list)
    error: str | None = None


def interrupted_reply_frames(c: TwilioCaller, onset: float, speech_end: float,
                             clear: float | None) -> tuple[list[Received], list[Received]]:
    """Agent frames received from ``onset`` on: (those of the interrupted reply, those of a new reply that
    started while the caller was still speaking).

    Without a `clear`, every frame up to the end of the interruption (+0.2 s) is the old reply: its answer
    cannot start earlier, unless the platform ended the caller's turn mid-sentence. Playout may pause at
    the onset and resume (heard as more of the old reply) before a barge-in commits. With a `clear`, the
    old reply is what came before it and what was in flight (no gap > 0.1 s) right after it; audio that
    comes later while the caller still speaks is a new reply to the first words of the interruption.
    """
    window = [r for r in c.received if onset <= r.at <= max(speech_end + 0.2, (clear or 0.0) + 0.1)]
    if clear is None:
        return window, []
    old = [r for r in window if r.at <= clear]
    rest = [r for r in window if r.at > clear]
    last = old[-1].at if old else clear
    i = 0
    while i < len(rest) and rest[i].at - last <= 0.1:
        last = rest[i].at
        i += 1
    return old + rest[:i], rest[i:]


async def _until_playing(c: TwilioCaller, reply_start: float, into_s: float) -> bool:
    await asyncio.sleep(max(0.0, reply_start + into_s - time.monotonic()))
    return c.agent_audible()


async def barge_in_session(target: Target, questions: list[Utterance], interruptions: list[Utterance],
                           backchannel: Utterance, trials: int, t: Timeouts, into_reply_s: float = 1.0,
                           observe_s: float = 2.0) -> BargeInResult:
    """On one call, `trials` times: while the agent speaks, a backchannel (must not cut it off), then a
    real interruption (must); the interruption's reply is the agent speech of the next trial."""
    res = BargeInResult(target.name)
    c = target.caller()
    q_iter = iter(questions * 10)
    try:
        res.call_id = await dial(c)
        await c.connect()
        first = await wait_audio_after(c, 0.0, t.greeting_s)
        if first is None:
            res.error = "no greeting"
            return res
        await wait_reply_done(c, first.at, t)
        reply: Received | None = None
        for n in range(trials):
            if reply is None:  # no agent speech under way: ask something
                _s, end = await c.speak(next(q_iter).ulaw)
                reply = await wait_audio_after(c, end, t.reply_s)
                if reply is None:
                    res.error = "no reply to a question"
                    break
            # 1. backchannel while the agent speaks
            playing = await _until_playing(c, reply.at, into_reply_s)
            bc = BackchannelTrial(speech_ms=round(backchannel.seconds * 1000), agent_was_speaking=playing)
            onset, bc_end = await c.speak(backchannel.ulaw)
            await asyncio.sleep(max(0.0, bc_end + observe_s - time.monotonic()))
            window = [r for r in c.received if onset <= r.at <= bc_end + observe_s]
            bc.cleared = any(onset <= x <= bc_end + observe_s for x in c.timings.clears)
            gaps = [b.at - a.at for a, b in itertools.pairwise(window)]
            bc.paused_ms = round(max(gaps, default=0.0) * 1000, 1)
            bc.continued = any(r.at >= bc_end + 1.0 for r in window) if playing else None
            if target.events is not None:
                bc.platform_pause = any(e.kind == "pause" and e.received_at >= onset
                                        for e in target.events.controls.get(res.call_id, []))
            res.backchannels.append(bc)
            # 2. a real interruption
            if not c.agent_audible():
                _s, end = await c.speak(next(q_iter).ulaw)
                reply = await wait_audio_after(c, end, t.reply_s)
                if reply is None:
                    res.error = "no reply to a question"
                    break
                await _until_playing(c, reply.at, into_reply_s)
            trial = BargeInTrial(agent_was_speaking=c.agent_audible())
            utter = interruptions[n % len(interruptions)]
            onset, end = await c.speak(utter.ulaw)
            await asyncio.sleep(max(0.0, end + 0.3 - time.monotonic()))
            clears = [x for x in c.timings.clears if x >= onset]
            run, early = interrupted_reply_frames(c, onset, end, clears[0] if clears else None)
            trial.new_reply_while_speaking_ms = round(sum(len(r.payload) for r in early) / 8.0, 1)
            trial.onset_to_clear_ms = ms(clears[0] - onset) if clears else None
            trial.onset_to_last_frame_ms = ms(run[-1].at - onset) if run else 0.0
            trial.audio_heard_after_onset_ms = round(sum(len(r.payload) for r in run) / 8.0, 1)
            first_gap = next((b.at for a, b in itertools.pairwise(run) if b.at - a.at > 0.25), None)
            trial.resumed_after_pause_ms = ms(first_gap - onset) if first_gap is not None else None
            if clears:
                trial.frames_after_clear = sum(1 for r in run if r.at > clears[0])
            if target.events is not None:
                ctl = [e for e in target.events.controls.get(res.call_id, []) if onset <= e.received_at <= onset + 3]
                seen = [e.received_at for e in ctl if e.kind == "barge_in"]
                trial.onset_to_platform_barge_in_ms = ms(seen[0] - onset) if seen else None
                trial.platform_controls = [(e.kind, ms(e.received_at - onset) or 0.0) for e in ctl]
            resumed_silently = any(k == "resume" for k, _ in trial.platform_controls) and bool(run) \
                and run[-1].at - onset < 0.3  # paused at the onset, resumed, nothing left to play
            if not clears and (not run or resumed_silently):  # the reply had (all but) finished: nothing to cut
                trial.agent_was_speaking = False
                trial.error = "the agent's reply ended at the onset"
            res.trials.append(trial)
            reply = await wait_audio_after(c, end, t.reply_s)  # the interruption's answer
            if reply is None:
                res.error = "no reply to an interruption"
                break
    except Exception as e:
        res.error = f"{type(e).__name__}: {e}"[:300]
    finally:
        await c.hangup()
    return res


# --------------------------------------------------------------------------- many calls at once
async def concurrent_conversations(target: Target, n_calls: int, questions: list[Utterance], turns: int,
                                   t: Timeouts, stagger_s: float = 1.0, seed: int = 0) -> list[CallResult]:
    """n_calls conversations at once (start times spread over stagger_s), each of `turns` questions."""
    rnd = random.Random(seed)

    async def one(k: int) -> CallResult:
        await asyncio.sleep(rnd.uniform(0, stagger_s) if n_calls > 1 else 0.0)
        qs = [questions[(k + j) % len(questions)] for j in range(turns)]
        return await conversation(target, qs, t)

    results = await asyncio.gather(*(one(k) for k in range(n_calls)), return_exceptions=True)
    out: list[CallResult] = []
    for r in results:
        if isinstance(r, BaseException):
            out.append(CallResult(target.name, error=f"{type(r).__name__}: {r}"[:300]))
        else:
            out.append(r)
    return out


def turn_rows(calls: list[CallResult]) -> list[TurnResult]:
    return [tr for c in calls for tr in c.turns]
