"""Call scenarios driven through TwilioCaller: conversations (voice-to-voice, greeting) and barge-in trials.

Timing conventions (all on the caller's monotonic clock):
- voice-to-voice: last caller speech frame sent → first agent audio frame received after it
  (``v2v_audible_ms``: → first agent frame that is not near-silence, i.e. what the ear notices);
- greeting: the stream's ``start`` → first agent audio frame;
- barge-in: first frame of the interrupting speech sent → ``clear`` received; → the caller stops hearing the
  interrupted reply, on the caller's playout clock (the last of its audio finishes playing: what was queued
  at the onset and what came after it, less what a `clear` dropped before it played); and, arrival-based,
  → the last frame of the interrupted reply received.

A measurement that could not be made is None (never 0) and is left out of every statistic; the report counts
how many are missing.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from .events import ControlEvent, PlatformEvents
from .speech import Utterance
from .stats import ms, summary
from .twilio_caller import PlayedFrame, Received, TwilioCaller, replay

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

    def caller(self, http: httpx.AsyncClient | None = None) -> TwilioCaller:
        return TwilioCaller(self.base_url, auth_token=self.auth_token, public_base_url=self.public_base_url,
                            to=self.to, http=http)


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
    reply_audio_s: float | None = None  # None: no reply
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
    jitter_ms: dict[str, Any] = field(default_factory=dict)  # |gap - frame duration|: n, p50, p95, p99, max
    odd_sizes: int = 0  # media payloads that are not whole 20 ms frames


@dataclass
class CallResult:
    target: str
    call_id: str = ""
    call_sid: str = ""  # the provider's (fake Twilio) id of the call
    greeting_ms: float | None = None
    turns: list[TurnResult] = field(default_factory=list)
    playout: Playout = field(default_factory=Playout)
    send_lag_max_ms: float | None = None  # None: the caller never sent a frame
    connected_s: float | None = None  # None: the media stream never started
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
    js = summary(jitter)
    p.jitter_ms = {k: js[k] for k in ("n", "p50", "p95", "p99", "max", "omitted") if k in js}
    return p


async def dial(c: TwilioCaller, attempts: int = 4, wait_s: float = 2.0) -> str:
    """The webhook, retried briefly when the number does not route: control-api's KV repair deletes the bench
    agent's keys (they have no rows in its database) and ``BenchAgent`` puts them back every 5 s, so the retries
    span more than that (a call of the 2026-12-02 bench missed it with 3 tries over 4 s)."""
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
        res.connected_s = round(time.monotonic() - c.timings.stream_started, 1) if c.timings.stream_started else None
        res.send_lag_max_ms = ms(c.timings.send_lag_max_s)
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
    onset_to_clear_ms: float | None = None  # None: no `clear` came
    # the caller's playout clock: the interrupted reply's last audio finishes playing (None: none was playing)
    onset_to_stop_hearing_ms: float | None = None
    onset_to_last_frame_received_ms: float | None = None  # arrival-based; None: no frame of it after the onset
    onset_to_platform_barge_in_ms: float | None = None  # control.barge_in seen on the bus
    frames_after_clear: int | None = None  # frames of the old reply received after the `clear`; None: no clear
    audio_dropped_by_clear_ms: float | None = None  # old-reply audio received but never played; None: no clear
    audio_played_after_onset_ms: float = 0.0  # old-reply audio the caller heard from the onset on (playout clock)
    audio_received_after_onset_ms: float = 0.0  # old-reply audio received from the onset on (arrival)
    resumed_after_pause_ms: float | None = None  # agent audio came back after a silence > 0.25 s, at this time
    new_reply_while_speaking_ms: float = 0.0  # audio of a new reply that began before the caller had finished
    agent_was_speaking: bool = True
    # (kind, ms after onset) of control.* events within 3 s; None: the target publishes none (the peer)
    platform_controls: list[tuple[str, float]] | None = None
    error: str | None = None


@dataclass
class BackchannelTrial:
    speech_ms: float
    cleared: bool = False  # a `clear` came (the reply was cut off, or paused: see platform_barge_in)
    # longest gap between agent frames received around the backchannel (arrival); None: < 2 frames to compare
    paused_ms: float | None = None
    # longest silence the caller heard in the agent's audio after the onset, between two stretches of it
    # (playout clock); None: nothing of the agent played after the onset
    silence_heard_ms: float | None = None
    continued: bool | None = None  # agent audio still came ≥ 1 s after the backchannel; None: not speaking
    platform_pause: bool | None = None  # control.pause published (suspected barge-in); None: not observable
    # control.barge_in published: the reply was dropped; None: not observable (a peer). The platform also sends a
    # `clear` on a mere pause (what was queued at the caller goes back to its buffer and plays on a resume), so
    # where the platform's events are seen, a false barge-in is a committed one, not any `clear`
    platform_barge_in: bool | None = None
    agent_was_speaking: bool = True

    @property
    def false_barge_in(self) -> bool:
        return self.platform_barge_in if self.platform_barge_in is not None else self.cleared


@dataclass
class BargeInResult:
    target: str
    call_id: str = ""
    trials: list[BargeInTrial] = field(default_factory=list)
    backchannels: list[BackchannelTrial] = field(default_factory=list)
    error: str | None = None


def interrupted_reply_frames(received: list[Received], onset: float, speech_end: float,
                             clear: float | None) -> tuple[list[Received], list[Received]]:
    """Agent frames received from ``onset`` on: (those of the interrupted reply, those of a new reply that
    started while the caller was still speaking).

    Without a `clear`, every frame up to the end of the interruption (+0.2 s) is the old reply: its answer
    cannot start earlier, unless the platform ended the caller's turn mid-sentence. Playout may pause at
    the onset and resume (heard as more of the old reply) before a barge-in commits. With a `clear`, the
    old reply is what came before it and what was in flight (no gap > 0.1 s) right after it; audio that
    comes later while the caller still speaks is a new reply to the first words of the interruption.
    """
    until = speech_end + 0.2 if clear is None else max(speech_end + 0.2, clear + 0.1)
    window = [r for r in received if onset <= r.at <= until]
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


def _audio_ms(frames: list[Received]) -> float:
    return round(sum(len(r.payload) for r in frames) / 8.0, 1)


def interrupted_playout(played: list[PlayedFrame], onset: float, after_onset: list[Received]) -> list[PlayedFrame]:
    """The interrupted reply on the caller's playout clock: frames received before the onset that were still
    queued (or playing) at it, and ``after_onset`` (its frames received from the onset on)."""
    mine = {id(r) for r in after_onset}
    out: list[PlayedFrame] = []
    for p in played:
        if id(p.frame) in mine:
            out.append(p)
        elif p.frame.at < onset and p.start + len(p.frame.payload) / 8000 > onset \
                and (p.cleared_at is None or p.cleared_at >= onset):
            out.append(p)
    return out


def measure_barge_in(received: list[Received], clears: list[float], onset: float, speech_end: float,
                     controls: list[ControlEvent] | None = None, agent_was_speaking: bool = True) -> BargeInTrial:
    """One interruption measured from what the caller received: the interruption's first speech frame went out
    at ``onset``, its last at ``speech_end``; ``controls``: the platform's control.* events for the call (None
    when the target publishes none)."""
    trial = BargeInTrial(agent_was_speaking=agent_was_speaking)
    if agent_was_speaking and not speaking_at(received, onset):
        trial.agent_was_speaking = False
        trial.error = "no agent audio was playing at the onset (between sentences, or the reply had ended)"
    after = [x for x in clears if x >= onset]
    clear = after[0] if after else None
    run, early = interrupted_reply_frames(received, onset, speech_end, clear)
    trial.new_reply_while_speaking_ms = _audio_ms(early)
    trial.onset_to_clear_ms = ms(clear - onset) if clear is not None else None
    trial.onset_to_last_frame_received_ms = ms(run[-1].at - onset) if run else None
    trial.audio_received_after_onset_ms = _audio_ms(run)
    first_gap = next((b.at for a, b in itertools.pairwise(run) if b.at - a.at > 0.25), None)
    trial.resumed_after_pause_ms = ms(first_gap - onset) if first_gap is not None else None
    if clear is not None:
        trial.frames_after_clear = sum(1 for r in run if r.at > clear)
    old = interrupted_playout(replay(received, clears), onset, run)
    heard = [p for p in old if not p.dropped and p.end > onset]
    trial.onset_to_stop_hearing_ms = ms(max(p.end for p in heard) - onset) if heard else None
    trial.audio_played_after_onset_ms = round(sum(p.end - max(p.start, onset) for p in heard) * 1000, 1)
    if clear is not None:
        trial.audio_dropped_by_clear_ms = round(sum(len(p.frame.payload) for p in old if p.dropped) / 8.0, 1)
    if controls is not None:
        ctl = [e for e in controls if onset <= e.received_at <= onset + 3]
        seen = [e.received_at for e in ctl if e.kind == "barge_in"]
        trial.onset_to_platform_barge_in_ms = ms(seen[0] - onset) if seen else None
        trial.platform_controls = [(e.kind, round((e.received_at - onset) * 1000, 1)) for e in ctl]
    stop = trial.onset_to_stop_hearing_ms
    resumed_silently = any(k == "resume" for k, _ in trial.platform_controls or []) \
        and (stop is None or stop < 300)  # paused at the onset, resumed, nothing left to play
    if clear is None and (stop is None or resumed_silently):  # the reply had (all but) finished: nothing to cut
        trial.agent_was_speaking = False
        trial.error = "the agent's reply ended at the onset"
    return trial


def measure_backchannel(received: list[Received], clears: list[float], onset: float, speech_end: float,
                        speech_ms: float, agent_was_speaking: bool, observe_s: float = 2.0,
                        controls: list[ControlEvent] | None = None) -> BackchannelTrial:
    """A backchannel said over the agent from ``onset`` to ``speech_end``, observed until ``observe_s`` after."""
    until = speech_end + observe_s
    bc = BackchannelTrial(speech_ms=speech_ms, agent_was_speaking=agent_was_speaking)
    bc.cleared = any(onset <= x <= until for x in clears)
    before = [r for r in received if r.at < onset][-1:]  # a gap that spans the onset counts too
    window = [r for r in received if onset <= r.at <= until]
    gaps = [b.at - a.at for a, b in itertools.pairwise(before + window)]
    bc.paused_ms = round(max(gaps) * 1000, 1) if gaps else None
    bc.continued = any(r.at >= speech_end + 1.0 for r in window) if agent_was_speaking else None
    bc.silence_heard_ms = longest_silence_heard(replay(received, clears), onset, until)
    if controls is not None:
        bc.platform_pause = any(e.kind == "pause" and e.received_at >= onset for e in controls)
        bc.platform_barge_in = any(e.kind == "barge_in" and onset <= e.received_at <= until for e in controls)
    return bc


def longest_silence_heard(played: list[PlayedFrame], start: float, end: float) -> float | None:
    """Longest silence (ms) on the playout clock between two stretches of agent audio, counted from ``start``
    on, up to audio that begins by ``end``. 0.0: the audio went on without a break; None: no agent audio
    played after ``start`` (nothing to measure)."""
    spans = sorted((p.start, p.end) for p in played if not p.dropped and p.end > p.start and p.start <= end)
    if not any(s1 > start for _s0, s1 in spans):
        return None
    longest = 0.0
    heard_until: float | None = None
    for s0, s1 in spans:
        if heard_until is not None and s0 > start:
            longest = max(longest, s0 - max(heard_until, start))
        heard_until = s1 if heard_until is None else max(heard_until, s1)
    return round(longest * 1000, 1)


async def _until_playing(c: TwilioCaller, reply_start: float, into_s: float) -> bool:
    await asyncio.sleep(max(0.0, reply_start + into_s - time.monotonic()))
    return c.agent_audible()


async def _until_speaking(c: TwilioCaller, run_s: float = 0.3, wait_s: float = 3.0) -> bool:
    """Wait (up to ``wait_s``) until the caller has heard the agent for ``run_s`` without a break and more of it
    is still queued: an interruption then lands on speech, not on the gap between two sentences."""
    deadline = time.monotonic() + wait_s
    while True:
        heard, ahead = c.agent_heard_run()
        if heard >= run_s and ahead > 0.0:
            return True
        if time.monotonic() >= deadline:
            return c.agent_audible(slack_s=0.0)
        await asyncio.sleep(0.01)


def speaking_at(received: list[Received], onset: float, min_s: float = 0.02) -> bool:
    """Was the agent's audio playing at ``onset`` on the caller's playout clock, with at least ``min_s`` of it
    (one frame) left? Frames received before the onset and in flight at it (within ``min_s``) count; a reply that
    ends within a frame of the onset, or a pause between two sentences, is not speech to interrupt."""
    played = replay([r for r in received if r.at <= onset + min_s], [])
    covered = sum(max(0.0, min(p.end, onset + min_s) - max(p.start, onset)) for p in played)
    return covered >= min_s - 0.001


async def barge_in_session(target: Target, questions: list[Utterance], interruptions: list[Utterance],
                           backchannel: Utterance, trials: int, t: Timeouts, into_reply_s: float = 1.0,
                           observe_s: float = 2.0) -> BargeInResult:
    """On one call, `trials` times: while the agent speaks, a backchannel (must not cut it off), then a
    real interruption (must); the interruption's reply is the agent speech of the next trial."""
    res = BargeInResult(target.name)
    c = target.caller()
    q_iter = iter(questions * 10)

    def controls() -> list[ControlEvent] | None:
        return None if target.events is None else list(target.events.controls.get(res.call_id, []))

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
            onset, bc_end = await c.speak(backchannel.ulaw)
            await asyncio.sleep(max(0.0, bc_end + observe_s - time.monotonic()))
            res.backchannels.append(measure_backchannel(
                list(c.received), list(c.timings.clears), onset, bc_end, round(backchannel.seconds * 1000),
                playing, observe_s, controls()))
            # 2. a real interruption
            if not c.agent_audible():
                _s, end = await c.speak(next(q_iter).ulaw)
                reply = await wait_audio_after(c, end, t.reply_s)
                if reply is None:
                    res.error = "no reply to a question"
                    break
                await _until_playing(c, reply.at, into_reply_s)
            speaking = await _until_speaking(c)
            utter = interruptions[n % len(interruptions)]
            onset, end = await c.speak(utter.ulaw)
            await asyncio.sleep(max(0.0, end + 0.3 - time.monotonic()))
            res.trials.append(measure_barge_in(list(c.received), list(c.timings.clears), onset, end, controls(),
                                               agent_was_speaking=speaking))
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
