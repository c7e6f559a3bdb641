"""Aggregation of call results into figures, and the JSON + markdown report files.

Every percentile printed comes with its n; p95 needs n >= 20 and p99 n >= 100 (see stats.min_samples), else
the report says "n too small". Measurements that could not be made are counted as missing, never as 0.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from . import looplag
from .calls import BargeInResult, CallResult, TurnResult
from .events import STAGES
from .stats import summary


def stage_names(turns: list[TurnResult]) -> list[str]:
    """The breakdown stages to report: the listed ones, and any other a `turn.completed` carried a number for."""
    extra = sorted({k for tr in turns for k, v in (tr.stages or {}).items() if v is not None and k not in STAGES})
    return [*STAGES, *extra]


def turn_figures(turns: list[TurnResult]) -> dict[str, Any]:
    stages: dict[str, Any] = {}
    for st in stage_names(turns):
        stages[st] = summary((tr.stages or {}).get(st) for tr in turns)
    # what the breakdown does not explain: platform v2v minus the stages it names
    other: list[float] = []
    overhead: list[float] = []
    delta: list[float] = []
    for tr in turns:
        s = tr.stages or {}
        llm = s.get("llm_first_sentence_ms")
        if llm is not None and s.get("early_start_ms") is not None:  # begun early: only what came after counts
            llm = max(llm - (s.get("early_start_ms") or 0.0), 0.0)
        parts = [s.get("end_of_turn_ms"), s.get("stt_ms"), llm, s.get("bus_and_playout_ms")]
        v = s.get("voice_to_voice_ms")
        if v is not None and all(p is not None for p in parts):
            other.append(v - sum(p for p in parts if p is not None))
        # the platform's own overhead: voice-to-voice minus what the stages computed (end of turn, stt, the LLM
        # after the final transcript, tts to its first frame); the rest is hops, queues, bus and playout
        tts = s.get("tts_first_audio_ms")
        if v is not None and tts is not None and all(p is not None for p in parts[:3]):
            overhead.append(v - sum(p for p in parts[:3] if p is not None) - tts)
        if v is not None and tr.v2v_ms is not None:
            delta.append(tr.v2v_ms - v)
    stages["between_stages_ms"] = summary(other)
    stages["platform_overhead_ms"] = summary(overhead)
    return {
        "turns": len(turns),
        "turns_without_reply": sum(1 for tr in turns if tr.v2v_ms is None),
        "turns_with_breakdown": sum(1 for tr in turns if tr.stages),
        "voice_to_voice_ms": summary(tr.v2v_ms for tr in turns),
        "voice_to_voice_audible_ms": summary(tr.v2v_audible_ms for tr in turns),
        "reply_audio_s": summary((tr.reply_audio_s for tr in turns if tr.v2v_ms is not None), ndigits=2),
        "replies_capped": sum(1 for tr in turns if tr.reply_capped),
        "stages_ms": stages,
        "caller_minus_platform_v2v_ms": summary(delta),
    }


def call_figures(calls: list[CallResult]) -> dict[str, Any]:
    turns = [tr for c in calls for tr in c.turns]
    out = turn_figures(turns)
    out["calls"] = len(calls)
    out["calls_failed"] = sum(1 for c in calls if c.error)
    out["errors"] = sorted({c.error for c in calls if c.error})[:10]
    out["greeting_ms"] = summary(c.greeting_ms for c in calls)
    frames = sum(c.playout.frames for c in calls)
    jitter_p99 = [c.playout.jitter_ms.get("p99") for c in calls]
    out["playout"] = {
        "calls": len(calls),
        "frames": frames,
        "late_frames": sum(c.playout.late_frames for c in calls),
        "late_frames_pct": round(100.0 * sum(c.playout.late_frames for c in calls) / frames, 2) if frames else None,
        "underruns": sum(c.playout.underruns for c in calls),
        "underrun_ms": round(sum(c.playout.underrun_ms for c in calls), 1),
        "jitter_p99_ms_worst_call": max((x for x in jitter_p99 if x is not None), default=None),
        "calls_without_jitter_p99": sum(1 for x in jitter_p99 if x is None),  # no audio, or n < 100 gaps
        "odd_sized_frames": sum(c.playout.odd_sizes for c in calls),
    }
    lags = [c.send_lag_max_ms for c in calls]
    out["caller_send_lag_max_ms"] = max((x for x in lags if x is not None), default=None)
    out["calls_without_send_lag"] = sum(1 for x in lags if x is None)  # the caller never sent a frame
    return out


def barge_in_figures(results: list[BargeInResult]) -> dict[str, Any]:
    trials = [t for r in results for t in r.trials]
    bcs = [b for r in results for b in r.backchannels]
    valid = [t for t in trials if t.agent_was_speaking]
    valid_bc = [b for b in bcs if b.agent_was_speaking]
    return {
        "trials": len(trials),
        "trials_during_agent_speech": len(valid),
        "clear_received": sum(1 for t in valid if t.onset_to_clear_ms is not None),
        "onset_to_clear_ms": summary(t.onset_to_clear_ms for t in valid),
        "onset_to_caller_stops_hearing_ms": summary(t.onset_to_stop_hearing_ms for t in valid),
        "onset_to_last_agent_frame_received_ms": summary(t.onset_to_last_frame_received_ms for t in valid),
        "onset_to_platform_barge_in_event_ms": summary(t.onset_to_platform_barge_in_ms for t in valid
                                                       if t.platform_controls is not None),
        "frames_after_clear_max": max((t.frames_after_clear for t in valid if t.frames_after_clear is not None),
                                      default=None),
        "agent_audio_played_after_onset_ms": summary(t.audio_played_after_onset_ms for t in valid),
        "agent_audio_received_after_onset_ms": summary(t.audio_received_after_onset_ms for t in valid),
        "agent_audio_dropped_by_clear_ms": summary(t.audio_dropped_by_clear_ms for t in valid
                                                   if t.onset_to_clear_ms is not None),
        "resumed_after_a_pause": sum(1 for t in valid if t.resumed_after_pause_ms is not None),
        "new_reply_while_caller_spoke": sum(1 for t in valid if t.new_reply_while_speaking_ms > 0),
        "backchannel": {
            "speech_ms": bcs[0].speech_ms if bcs else None,
            "trials": len(bcs),
            "during_agent_speech": len(valid_bc),
            "false_barge_ins": sum(1 for b in valid_bc if b.false_barge_in),
            "reply_continued": sum(1 for b in valid_bc if b.continued),
            "reply_ended_by_itself": sum(1 for b in valid_bc if b.continued is False and not b.false_barge_in),
            "platform_paused": sum(1 for b in valid_bc if b.platform_pause),
            "platform_pause_observed": sum(1 for b in valid_bc if b.platform_pause is not None),
            "longest_silence_heard_ms": summary(b.silence_heard_ms for b in valid_bc),
            "longest_gap_received_ms": summary(b.paused_ms for b in valid_bc),
        },
        "errors": [r.error for r in results if r.error],
    }


def knee_statistic(base: dict[str, Any], step: dict[str, Any]) -> tuple[str, float | None, float | None]:
    """The percentile the concurrency knee compares a sweep step with the one-call baseline by: p95 when both
    have enough turns for it, else p50. (name, baseline value, step value)."""
    q = "p95" if base.get("p95") is not None and step.get("p95") is not None else "p50"
    return q, base.get(q), step.get(q)


# --------------------------------------------------------------------------- markdown
TOO_SMALL = "n too small"


def _f(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        v = f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
    return f"{v}{unit}"


def _q(s: dict[str, Any] | None, q: str, unit: str = " ms") -> str:
    """One statistic of a summary: its value, "n too small" when there are too few values for it, "-" for none."""
    s = s or {}
    if s.get(q) is None and q in (s.get("omitted") or {}):
        return TOO_SMALL
    return _f(s.get(q), unit)


def _n(s: dict[str, Any] | None) -> str:
    """n, and how many measurements were missing (not counted in n or in any statistic)."""
    s = s or {}
    missing = s.get("missing") or 0
    return f"{_f(s.get('n'))}" + (f" (+{missing} missing)" if missing else "")


def _p(s: dict[str, Any] | None, unit: str = " ms", qs: tuple[str, ...] = ("p50", "p95")) -> str:
    """E.g. "p50 2,234 ms, p95 n too small (n=4; 1 missing)"."""
    s = s or {}
    if not s.get("n"):
        return f"no measurement (n=0{'; ' + str(s['missing']) + ' missing' if s.get('missing') else ''})"
    missing = s.get("missing") or 0
    return ", ".join(f"{q} {_q(s, q, unit)}" for q in qs) + f" (n={s['n']}" + (
        f"; {missing} missing)" if missing else ")")


def _pct_row(name: str, s: dict[str, Any], unit: str = " ms") -> str:
    return (f"| {name} | {_n(s)} | {_q(s, 'p50', unit)} | {_q(s, 'p95', unit)} | "
            f"{_q(s, 'p99', unit)} | {_q(s, 'max', unit)} |")


HEAD = "| | n | p50 | p95 | p99 | max |\n|---|---:|---:|---:|---:|---:|"

# peer figures: (key, label); lower is better for all of them
PEER_FIGURES = (("voice_to_voice_ms", "voice-to-voice"),
                ("voice_to_voice_audible_ms", "voice-to-voice (audible)"),
                ("greeting_ms", "greeting"),
                ("onset_to_caller_stops_hearing_ms", "barge-in → caller stops hearing (playout clock)"),
                ("onset_to_clear_ms", "barge-in → clear"),
                ("onset_to_last_agent_frame_received_ms", "barge-in → last frame received"),
                ("agent_audio_played_after_onset_ms", "barge-in: agent audio heard after onset"))


def _playout_line(pl: dict[str, Any]) -> str:
    return (f"late frames {_f(pl.get('late_frames_pct'), '%')} ({pl.get('late_frames')} of {pl.get('frames')} frames "
            f"over {pl.get('calls', '?')} calls); underruns {pl.get('underruns')} totalling "
            f"{_f(pl.get('underrun_ms'), ' ms')}")


def _peer_rows(pe: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Rows (ours vs pipecat, who is ahead) for the headline, and the labels of the figures where we are behind."""
    rows: list[str] = []
    lose: list[str] = []
    o_all, p_all = pe.get("ours", {}), pe.get("pipecat", {})

    def row(label: str, o: float | None, p: float | None, o_txt: str, p_txt: str) -> None:
        ahead = "-" if o is None or p is None else "ours" if o < p else "pipecat" if p < o else "tie"
        if ahead == "pipecat":
            lose.append(label)
            label = f"**{label}**"
        rows.append(f"| {label} | {o_txt} | {p_txt} | {ahead} |")

    for key, label in PEER_FIGURES:
        o, p = o_all.get(key) or {}, p_all.get(key) or {}
        if not o.get("n") and not p.get("n"):
            continue
        for q in ("p50", "p95"):
            row(f"{label} {q}", o.get(q), p.get(q), f"{_q(o, q)} (n={_n(o)})", f"{_q(p, q)} (n={_n(p)})")
    for name_key, label, unit in (("late_frames_pct", "late frames", "%"), ("underruns", "underruns", ""),
                                  ("underrun_ms", "underrun total", " ms")):
        o, p = (o_all.get("playout") or {}).get(name_key), (p_all.get("playout") or {}).get(name_key)
        of, pf = (o_all.get("playout") or {}).get("frames"), (p_all.get("playout") or {}).get("frames")
        row(label, o, p, f"{_f(o, unit)} (frames={_f(of)})", f"{_f(p, unit)} (frames={_f(pf)})")
    ob, pb = o_all.get("backchannel") or {}, p_all.get("backchannel") or {}
    if ob or pb:
        for key, label in (("longest_silence_heard_ms", "backchannel: silence heard after it p50"),
                           ("longest_gap_received_ms", "backchannel: longest gap between frames received p50")):
            o, p = ob.get(key) or {}, pb.get(key) or {}
            row(label, o.get("p50"), p.get("p50"), f"{_q(o, 'p50')} (n={_n(o)})", f"{_q(p, 'p50')} (n={_n(p)})")
        row("backchannel: false barge-ins", ob.get("false_barge_ins"), pb.get("false_barge_ins"),
            f"{ob.get('false_barge_ins')} of {ob.get('during_agent_speech')}",
            f"{pb.get('false_barge_ins')} of {pb.get('during_agent_speech')}")
    return rows, lose


def headline(rep: dict[str, Any]) -> list[str]:
    """The figures a summary of this run must quote, good and bad alike, each with its n, from this run only."""
    lines = ["## Headline (this run only; every figure with its n)", ""]
    v, b, sw, pe, so, br = (rep.get(k) for k in ("voice_to_voice", "barge_in", "sweep", "peer", "soak", "browser"))
    if v:
        lines += [f"- voice-to-voice (one call at a time): {_p(v['voice_to_voice_ms'])}; "
                  f"{v['turns_without_reply']} of {v['turns']} turns got no reply",
                  "- the platform's own overhead (voice-to-voice minus end of turn, stt, the LLM after the final "
                  "transcript and tts to its first frame, per turn): "
                  f"{_p(v.get('stages_ms', {}).get('platform_overhead_ms'))}",
                  f"- greeting: {_p(v['greeting_ms'])}",
                  f"- playout at the caller: {_playout_line(v['playout'])}"]
        if v.get("loop_lag"):
            lines.append(f"- {looplag.line(v['loop_lag'])}")
    if br:
        lines.append(browser_headline(br))
    eo = rep.get("eot")
    if eo:
        lines.append(eot_headline(eo))
    sp = rep.get("sip")
    if sp:
        lines.append(f"- SIP voice-to-voice (G.711 RTP at the caller: last packet of the question → first packet of "
                     f"the reply with sound): {_p(sp['voice_to_voice_ms'])}; {sp['turns_without_reply']} of "
                     f"{sp['turns']} turns got no reply over {sp['calls']} call(s)"
                     + (f", {sp['calls_failed']} failed" if sp['calls_failed'] else ""))
    if b:
        bc = b["backchannel"]
        lines += [f"- barge-in, speech onset → caller stops hearing the agent (playout clock): "
                  f"{_p(b['onset_to_caller_stops_hearing_ms'])}; {b['trials_during_agent_speech']} interruptions "
                  f"during agent speech",
                  f"- barge-in, speech onset → `clear`: {_p(b['onset_to_clear_ms'])}; "
                  f"{b['clear_received']} of {b['trials_during_agent_speech']} got a `clear`",
                  f"- backchannel ({_f(bc['speech_ms'])} ms 'mm-hmm'): silence heard in the agent's audio after it "
                  f"{_p(bc['longest_silence_heard_ms'], qs=('p50',))}; longest gap between frames received "
                  f"{_p(bc['longest_gap_received_ms'], qs=('p50',))}; {bc['false_barge_ins']} false barge-ins in "
                  f"{bc['during_agent_speech']} trials"]
    if sw:
        k = sw["knee"]
        lines.append(f"- concurrency knee: up to {k['last_good_calls']} simultaneous call(s)"
                     + (f" (at {k['first_bad_calls']}: {k['reason']})" if k.get("first_bad_calls")
                        else f" ({k['reason']})"))
    if so:
        lines.append(f"- soak: {so['calls']} calls ({so['calls_failed']} failed) over {so['minutes']} min at "
                     f"{so['concurrency']} concurrent; voice-to-voice {_p(so['voice_to_voice_ms'])}"
                     + (f"; {_playout_line(so['playout'])}" if so.get("playout") else ""))
    if pe:
        rows, lose = _peer_rows(pe)
        lines += ["- peer (stock Pipecat, same models, same caller, alternating runs): "
                  + (f"**behind Pipecat on {len(lose)} figure(s): {'; '.join(lose)}**" if lose
                     else "ahead or level on every figure below"), "",
                  "| figure (lower is better) | ours | pipecat | ahead |", "|---|---:|---:|---|", *rows]
    if not (v or b or sw or pe or so or br or sp or eo):
        lines.append("- no call figures in this run")
    missing_parts = [name for name, present in (("voice-to-voice", v or pe or so), ("barge-in", b or pe),
                                                ("peer comparison", pe)) if not present]
    if missing_parts:
        lines += ["", f"Not measured in this run: {', '.join(missing_parts)} (see the other `latest*.md` reports)."]
    return [*lines, ""]


def eot_headline(eo: dict[str, Any]) -> str:
    """The end-of-turn phase (bench/eot.py) in one line: end of turn per kind, cut-offs, replies begun early."""
    kinds = "; ".join(f"{kind} {_p(k['end_of_turn_ms'])}" for kind, k in eo["kinds"].items())
    cut = (eo["kinds"].get("paused") or {}).get("cut_off") or {}
    es = eo["early_start"]
    return (f"- end of turn (speech offset → decision, platform's figure) by kind: {kinds}; sentences broken off by "
            f"a {_f(eo['pause_s'] * 1000)} ms pause cut off in {cut.get('cut', '-')} of {cut.get('told', '-')}; "
            f"replies begun early (likely-final transcript) in {es['begun_early']} of {es['turns']} turns")


def eot_section(eo: dict[str, Any]) -> list[str]:
    lines = ["## End of turn by kind of utterance", "",
             "The platform's end-of-turn time (speech offset → decision, from `turn.completed`), caller "
             "voice-to-voice, and replies whose LLM request began on the likely-final transcript, before the end of "
             "turn was decided "
             f"(`early_start_ms`: by how much). `paused`: a sentence broken off after a dangling word, "
             f"{_f(eo['pause_s'] * 1000)} ms of silence, then its end; cut off = the turn ended in the pause.", "",
             "| kind | asked | answered | end of turn p50 | p95 | n | v2v p50 | p95 | n | begun early | head start p50 "
             "| cut off |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for kind, k in eo["kinds"].items():
        e, v, es, cut = k["end_of_turn_ms"], k["voice_to_voice_ms"], k["early_start"], k["cut_off"]
        lines.append(f"| {kind} | {k['asked']} | {k['answered']} | {_q(e, 'p50')} | {_q(e, 'p95')} | {_n(e)} | "
                     f"{_q(v, 'p50')} | {_q(v, 'p95')} | {_n(v)} | {es['begun_early']} of {es['turns']} | "
                     f"{_q(es['early_start_ms'], 'p50')} | "
                     + (f"{cut['cut']} of {cut['told']}" if cut else "-") + " |")
    lines += ["", "What the platform heard (every paused sentence of the first round, two of each other kind):", ""]
    for kind, k in eo["kinds"].items():
        for ex in k["examples"]:
            lines.append(f"- {kind}: said \"{ex['said']}\" → transcript \"{ex['heard']}\"")
    if eo.get("errors"):
        lines += ["", f"Errors: {eo['errors']}"]
    return [*lines, ""]


def browser_headline(br: dict[str, Any]) -> str:
    """The headline line of the browser phase (bench/browser.py): voice-to-voice measured in the page."""
    label = ("- browser voice-to-voice (WebRTC from the console page, measured in the page: end of the caller's "
             "speech → first agent audio received)")
    if br.get("skipped"):
        return f"- browser voice-to-voice: not measured ({br['skipped']})"
    return (f"{label}: {_p(br['voice_to_voice_ms'])}; {br['turns_without_reply']} of {br['turns']} turns got no reply"
            f" over {br['calls']} call(s)" + (f", {br['calls_failed']} failed" if br.get("calls_failed") else ""))


def markdown(rep: dict[str, Any]) -> str:
    m = rep["machine"]
    lines = [f"# Voice platform benchmark — {rep['started_at']}", ""]
    lines += [f"Machine: {m['cpu_model']}, {m['cores_logical']} cores, {m['memory_gb']} GB RAM, "
              f"load average at start {m['load_average_at_start']}"
              f"{', at end ' + str(m['load_average_at_end']) if m.get('load_average_at_end') else ''}; "
              f"commit `{(m['git'].get('commit') or '?')[:12]}`"
              f"{' (dirty tree)' if m['git'].get('dirty') else ''}.",
              f"Models: STT {m['models']['services'].get('stt')}, TTS {m['models']['services'].get('tts')}, "
              f"LLM served {m['models'].get('llm_served')}. Target {rep['config']['url']}. "
              f"Duration {rep.get('duration_s')} s.", ""]
    lines += headline(rep)
    lines += ["Percentiles: p95 needs n ≥ 20 values and p99 n ≥ 100, else \"n too small\"; \"missing\" counts "
              "measurements that could not be made (left out of n and of every statistic).", ""]
    v = rep.get("voice_to_voice")
    if v:
        lines += ["## Voice-to-voice (one call at a time)", "",
                  "Last caller speech frame sent → first agent audio frame received (caller's clock); "
                  "stages from the platform's `turn.completed` events.", "", HEAD,
                  _pct_row("voice-to-voice", v["voice_to_voice_ms"]),
                  _pct_row("… to first audible agent frame", v["voice_to_voice_audible_ms"]),
                  _pct_row("greeting (stream start → first audio)", v["greeting_ms"])]
        for st, s in v["stages_ms"].items():
            lines.append(_pct_row(f"stage: {st}", s))
        lines.append(_pct_row("caller v2v minus platform v2v", v["caller_minus_platform_v2v_ms"]))
        lines += ["", f"{v['turns']} turns over {v['calls']} calls; {v['turns_without_reply']} without reply; "
                  f"{v['turns_with_breakdown']} matched to a `turn.completed`; replies "
                  f"{_q(v['reply_audio_s'], 'p50', ' s')} (p50, n={_n(v['reply_audio_s'])}) of audio; playout: "
                  f"{_playout_line(v['playout'])}.", ""]
        if v.get("errors"):
            lines += [f"Errors: {v['errors']}", ""]
    if rep.get("eot"):
        lines += eot_section(rep["eot"])
    b = rep.get("barge_in")
    if b:
        bc = b["backchannel"]
        lines += ["## Barge-in", "", HEAD,
                  _pct_row("speech onset → caller stops hearing the agent (playout clock)",
                           b["onset_to_caller_stops_hearing_ms"]),
                  _pct_row("speech onset → `clear` received", b["onset_to_clear_ms"]),
                  _pct_row("speech onset → last agent frame received (arrival)",
                           b["onset_to_last_agent_frame_received_ms"]),
                  _pct_row("speech onset → `control.barge_in` on the bus", b["onset_to_platform_barge_in_event_ms"]),
                  _pct_row("agent audio heard after the onset (playout clock)", b["agent_audio_played_after_onset_ms"]),
                  _pct_row("agent audio received after the onset", b["agent_audio_received_after_onset_ms"]),
                  _pct_row("agent audio received but dropped by the `clear`", b["agent_audio_dropped_by_clear_ms"]),
                  _pct_row("backchannel: silence heard after it (playout clock)", bc["longest_silence_heard_ms"]),
                  _pct_row("backchannel: longest gap between frames received", bc["longest_gap_received_ms"]),
                  "", f"{b['clear_received']}/{b['trials_during_agent_speech']} interruptions during agent speech "
                  f"got a `clear` ({b['trials']} tried); in {b['resumed_after_a_pause']} the agent's audio stopped, "
                  "then came back before the barge-in committed (the caller heard more of the old reply); in "
                  f"{b['new_reply_while_caller_spoke']} a new reply began before the caller had finished "
                  "(the turn ended mid-sentence). "
                  f"Backchannel ({_f(bc['speech_ms'])} ms 'mm-hmm'): {bc['false_barge_ins']} false "
                  f"barge-ins in {bc['during_agent_speech']} trials during agent speech; reply continued "
                  f"{bc['reply_continued']}, ended by itself {bc['reply_ended_by_itself']}, playout paused "
                  f"{bc['platform_paused']} (of {bc['platform_pause_observed']} observable).", ""]
    br = rep.get("browser")
    if br:
        lines += ["## Browser calls (WebRTC, measured in the page)", ""]
        if br.get("skipped"):
            lines += [f"Not measured: {br['skipped']}.", ""]
        else:
            lines += ["Headless Chromium on the console's talk page, its fake microphone playing piper questions "
                      "separated by silence; end of each question (the microphone's clock) → first agent audio the "
                      "page received (the page's recording and clock).", "", HEAD,
                      _pct_row("voice-to-voice (in the page)", br["voice_to_voice_ms"]),
                      _pct_row("microphone open → first agent audio (call set-up + greeting)", br["first_audio_ms"]),
                      "", f"{br['turns']} turns over {br['calls']} calls ({br['calls_failed']} failed); "
                      f"{br['turns_without_reply']} without a measurement"
                      + (f": {br['missing_reasons']}" if br.get("missing_reasons") else "") + ".", ""]
            if br.get("errors"):
                lines += [f"Errors: {br['errors']}", ""]
    bus = rep.get("bus")
    if bus:
        lines += ["## Bus overhead (one NATS hop, publish → receive)", "",
                  "| phase | load | audio n | audio p50 | audio p99 | events n | event ack p50 | event ack p99 | "
                  "event → pull (1) p50 | p99 | event → pull (8, 1 s) p50 | p99 |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for p in bus["phases"]:
            a, e = p["audio"]["latency_ms"], p["events"]
            f1, f8 = e["publish_to_receive_ms_fetch_1"], e["publish_to_receive_ms_fetch_8_timeout_1s"]
            lines.append(
                f"| {p['phase']} | {p['audio_msgs_per_s']} frames/s + {p['events_per_s']:.0f} events/s | "
                f"{_n(a)} | {_q(a, 'p50')} | {_q(a, 'p99')} | {_n(e['publish_to_ack_ms'])} | "
                f"{_q(e['publish_to_ack_ms'], 'p50')} | {_q(e['publish_to_ack_ms'], 'p99')} | "
                f"{_q(f1, 'p50')} | {_q(f1, 'p99')} (n={_n(f1)}) | {_q(f8, 'p50')} | {_q(f8, 'p99')} (n={_n(f8)}) |")
        lines.append("")
    sw = rep.get("sweep")
    if sw:
        lines += ["## Concurrency sweep", "",
                  "| calls | turns | no reply | v2v n | v2v p50 | v2v p95 | v2v p99 | greeting p50 (n) | late frames "
                  "| underruns | CPU % (services, of one core) | CPU %/call | RSS growth/call "
                  "| machine busy (all cores) |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for st in sw["steps"]:
            tot = st["resources"].get("_total", {})
            v2 = st["voice_to_voice_ms"]
            pl = st["playout"]
            lines.append(
                f"| {st['calls']} | {st['turns']} | {st['turns_without_reply']} | {_n(v2)} | {_q(v2, 'p50')} | "
                f"{_q(v2, 'p95')} | {_q(v2, 'p99')} | {_q(st['greeting_ms'], 'p50')} ({_n(st['greeting_ms'])}) | "
                f"{pl['late_frames']} ({_f(pl['late_frames_pct'], '%')}) | "
                f"{pl['underruns']} ({_f(pl.get('underrun_ms'), ' ms')}) | {_f(tot.get('cpu_pct'))} | "
                f"{_f(tot.get('cpu_pct_per_call'))} | "
                f"{_f(tot.get('rss_growth_per_call_mb'), ' MB')} | {_f(tot.get('machine_cpu_pct_all_cores'), '%')} |")
        lines += ["", "Where the time goes per step (p50 / p95 of the platform's stages, n):", "",
                  "| calls | end of turn | stt | LLM first token | LLM first sentence | bus and playout | "
                  "not in any stage (queues, hops) |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for st in sw["steps"]:
            sm = st.get("stages_ms", {})

            def pp(name: str, sm: dict[str, Any] = sm) -> str:
                x = sm.get(name, {})
                return f"{_q(x, 'p50')} / {_q(x, 'p95')} (n={_n(x)})"

            lines.append(f"| {st['calls']} | {pp('end_of_turn_ms')} | {pp('stt_ms')} | {pp('llm_first_token_ms')} | "
                         f"{pp('llm_first_sentence_ms')} | {pp('bus_and_playout_ms')} | {pp('between_stages_ms')} |")
        k = sw["knee"]
        q = k.get("percentile", "p95")
        lines += ["", f"Knee: up to **{k['last_good_calls']}** simultaneous calls voice-to-voice stays under twice "
                  f"the one-call figure ({q} {_f(k.get('baseline_ms'), ' ms')}, n={_f(k.get('baseline_n'))}; p50 is "
                  "compared where a step has too few turns for p95); "
                  + (f"at {k['first_bad_calls']} calls: {k['reason']}." if k["first_bad_calls"] else f"{k['reason']}.")
                  + " Late frames: agent audio arriving more than 20 ms after the previous frame's due time "
                  "(bursts); underruns: the caller's playout ran dry mid-reply (audible).", ""]
    so = rep.get("soak")
    if so:
        lines += ["## Soak", "", f"{so['calls']} calls ({so['calls_failed']} failed), {so['call_minutes']} "
                  f"call-minutes over {so['minutes']} min at {so['concurrency']} concurrent; voice-to-voice "
                  f"{_p(so['voice_to_voice_ms'])}.", "",
                  "| service | RSS start | RSS end | MB per call-minute | fds start | fds end |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, s in so["services"].items():
            lines.append(f"| {name} | {_f(s['rss_start_mb'], ' MB')} | {_f(s['rss_end_mb'], ' MB')} | "
                         f"{_f(s['rss_growth_mb_per_call_minute'])} | {_f(s['fds_start'])} | {_f(s['fds_end'])} |")
        lines += ["", "| NATS stream | consumers before | after | durable added | durable removed | "
                  "ephemeral created during the soak (still there) | their inactivity threshold |",
                  "|---|---:|---:|---|---|---:|---|"]
        for name, c in so["nats_consumers"].items():
            lines.append(f"| {name} | {c['before']} | {c['after']} | {', '.join(c['durable_added']) or '-'} | "
                         f"{', '.join(c['durable_removed']) or '-'} | {c['ephemeral_created_during_run']} | "
                         f"{', '.join(f'{x:.0f} s' for x in c['ephemeral_inactive_threshold_s']) or '-'} |")
        lines += ["", "| KV bucket | entries before | after | left by the soak's calls |", "|---|---:|---:|---:|"]
        for name, kv in so["kv"].items():
            lines.append(f"| {name} | {_f(kv['before'])} | {_f(kv['after'])} | {kv['left_by_soak_calls']} |")
        lines.append("")
    pe = rep.get("peer")
    if pe:
        lines += ["## Peer comparison: stock Pipecat pipeline, same models, same caller, alternating runs", "",
                  "| | ours n | ours p50 | ours p95 | pipecat n | pipecat p50 | pipecat p95 | ratio p50 "
                  "(pipecat/ours) | ratio p95 |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for key, label in PEER_FIGURES:
            o, p, r = pe["ours"].get(key) or {}, pe["pipecat"].get(key) or {}, pe["ratio"].get(key) or {}
            ratio95 = _f(r.get("p95")) if r.get("p95") is not None else (
                TOO_SMALL if "p95" in (o.get("omitted") or {}) or "p95" in (p.get("omitted") or {}) else "-")
            lines.append(f"| {label} | {_n(o)} | {_q(o, 'p50')} | {_q(o, 'p95')} | {_n(p)} | {_q(p, 'p50')} | "
                         f"{_q(p, 'p95')} | {_f(r.get('p50'))} | {ratio95} |")
        lines += ["", f"Turns: ours {pe['ours'].get('turns')}, pipecat {pe['pipecat'].get('turns')}; without reply: "
                  f"ours {pe['ours'].get('turns_without_reply')}, pipecat {pe['pipecat'].get('turns_without_reply')}. "
                  f"Playout: ours {_playout_line(pe['ours'].get('playout') or {})}; pipecat "
                  f"{_playout_line(pe['pipecat'].get('playout') or {})}."]
        for name in ("ours", "pipecat"):
            side = pe[name]
            if "trials_during_agent_speech" in side:
                lines.append(f"Barge-in on {name}: {side.get('clear_received')}/{side['trials_during_agent_speech']} "
                             f"interruptions got a `clear`; agent audio stopped and came back before the barge-in "
                             f"committed in {side.get('resumed_after_a_pause')}; a new reply began before the caller "
                             f"had finished in {side.get('new_reply_while_caller_spoke')}.")
            bc = side.get("backchannel")
            if bc:
                lines.append(f"Backchannel on {name}: {bc['false_barge_ins']} false barge-ins in "
                             f"{bc['during_agent_speech']}; silence heard after it "
                             f"{_p(bc['longest_silence_heard_ms'], qs=('p50',))}; longest gap between frames "
                             f"received {_p(bc['longest_gap_received_ms'], qs=('p50',))}.")
        if pe.get("notes"):
            lines += ["", *[f"- {n}" for n in pe["notes"]]]
        lines.append("")
    if rep.get("notes"):
        lines += ["## Notes", "", *[f"- {n}" for n in rep["notes"]], ""]
    return "\n".join(lines)


def write(rep: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime())
    kind = rep.get("mode", "bench")
    j = out_dir / f"{stamp}-{kind}.json"
    md = out_dir / f"{stamp}-{kind}.md"
    text = json.dumps(rep, indent=2, default=str)
    j.write_text(text)
    md.write_text(markdown(rep))
    suffix = "" if kind == "bench" else f"-{kind}"  # latest.* = make bench; latest-peer.*, latest-soak.*
    (out_dir / f"latest{suffix}.json").write_text(text)
    (out_dir / f"latest{suffix}.md").write_text(md.read_text())
    return j, md
