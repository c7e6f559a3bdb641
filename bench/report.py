"""Aggregation of call results into figures, and the JSON + markdown report files."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .calls import BargeInResult, CallResult, TurnResult
from .events import STAGES
from .stats import summary


def turn_figures(turns: list[TurnResult]) -> dict[str, Any]:
    stages: dict[str, Any] = {}
    for st in STAGES:
        stages[st] = summary((tr.stages or {}).get(st) for tr in turns)
    # what the breakdown does not explain: platform v2v minus the stages it names
    other: list[float] = []
    delta: list[float] = []
    for tr in turns:
        s = tr.stages or {}
        parts = [s.get("end_of_turn_ms"), s.get("stt_ms"), s.get("llm_first_sentence_ms"), s.get("bus_and_playout_ms")]
        v = s.get("voice_to_voice_ms")
        if v is not None and all(p is not None for p in parts):
            other.append(v - sum(p for p in parts if p is not None))
        if v is not None and tr.v2v_ms is not None:
            delta.append(tr.v2v_ms - v)
    stages["between_stages_ms"] = summary(other)
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
    out["playout"] = {
        "frames": frames,
        "late_frames": sum(c.playout.late_frames for c in calls),
        "late_frames_pct": round(100.0 * sum(c.playout.late_frames for c in calls) / frames, 2) if frames else None,
        "underruns": sum(c.playout.underruns for c in calls),
        "underrun_ms": round(sum(c.playout.underrun_ms for c in calls), 1),
        "jitter_p99_ms_worst_call": max((c.playout.jitter_ms.get("p99") or 0.0 for c in calls), default=None),
        "odd_sized_frames": sum(c.playout.odd_sizes for c in calls),
    }
    out["caller_send_lag_max_ms"] = max((c.send_lag_max_ms for c in calls), default=0.0)
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
        "onset_to_last_agent_frame_ms": summary(t.onset_to_last_frame_ms for t in valid),
        "onset_to_platform_barge_in_event_ms": summary(t.onset_to_platform_barge_in_ms for t in valid),
        "frames_after_clear_max": max((t.frames_after_clear for t in valid), default=None),
        "agent_audio_heard_after_onset_ms": summary(t.audio_heard_after_onset_ms for t in valid),
        "resumed_after_a_pause": sum(1 for t in valid if t.resumed_after_pause_ms is not None),
        "new_reply_while_caller_spoke": sum(1 for t in valid if t.new_reply_while_speaking_ms > 0),
        "backchannel": {
            "speech_ms": bcs[0].speech_ms if bcs else None,
            "trials": len(bcs),
            "during_agent_speech": len(valid_bc),
            "false_barge_ins": sum(1 for b in valid_bc if b.cleared),
            "reply_continued": sum(1 for b in valid_bc if b.continued),
            "reply_ended_by_itself": sum(1 for b in valid_bc if b.continued is False and not b.cleared),
            "platform_paused": sum(1 for b in valid_bc if b.platform_pause),
            "longest_gap_after_ms": summary(b.paused_ms for b in valid_bc),
        },
        "errors": [r.error for r in results if r.error],
    }


# --------------------------------------------------------------------------- markdown
def _f(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        v = f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
    return f"{v}{unit}"


def _pct_row(name: str, s: dict[str, Any], unit: str = " ms") -> str:
    return (f"| {name} | {_f(s.get('n'))} | {_f(s.get('p50'), unit)} | {_f(s.get('p95'), unit)} | "
            f"{_f(s.get('p99'), unit)} | {_f(s.get('max'), unit)} |")


HEAD = "| | n | p50 | p95 | p99 | max |\n|---|---:|---:|---:|---:|---:|"


def markdown(rep: dict[str, Any]) -> str:
    m = rep["machine"]
    lines = [f"# Voice platform benchmark — {rep['started_at']}", ""]
    lines += [f"Machine: {m['cpu_model']}, {m['cores_logical']} cores, {m['memory_gb']} GB RAM, "
              f"load average at start {m['load_average_at_start']}; commit `{(m['git'].get('commit') or '?')[:12]}`"
              f"{' (dirty tree)' if m['git'].get('dirty') else ''}.",
              f"Models: STT {m['models']['services'].get('stt')}, TTS {m['models']['services'].get('tts')}, "
              f"LLM served {m['models'].get('llm_served')}. Target {rep['config']['url']}. "
              f"Duration {rep.get('duration_s')} s.", ""]
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
                  f"{_f(v['reply_audio_s']['p50'])} s (p50) of audio; playout: {v['playout']['late_frames']} late "
                  f"frames of {v['playout']['frames']}, {v['playout']['underruns']} underruns.", ""]
        if v.get("errors"):
            lines += [f"Errors: {v['errors']}", ""]
    b = rep.get("barge_in")
    if b:
        bc = b["backchannel"]
        lines += ["## Barge-in", "", HEAD,
                  _pct_row("speech onset → `clear` received", b["onset_to_clear_ms"]),
                  _pct_row("speech onset → last agent frame received", b["onset_to_last_agent_frame_ms"]),
                  _pct_row("speech onset → `control.barge_in` on the bus", b["onset_to_platform_barge_in_event_ms"]),
                  _pct_row("agent audio received after the onset", b["agent_audio_heard_after_onset_ms"]),
                  "", f"{b['clear_received']}/{b['trials_during_agent_speech']} interruptions during agent speech "
                  f"got a `clear`; in {b['resumed_after_a_pause']} the agent's audio stopped, then came back "
                  "before the barge-in committed (the caller heard more of the old reply); in "
                  f"{b['new_reply_while_caller_spoke']} a new reply began before the caller had finished "
                  "(the turn ended mid-sentence). "
                  f"Backchannel ({_f(bc['speech_ms'])} ms 'mm-hmm'): {bc['false_barge_ins']} false "
                  f"barge-ins in {bc['during_agent_speech']} trials during agent speech; reply continued "
                  f"{bc['reply_continued']}, ended by itself {bc['reply_ended_by_itself']}, playout paused "
                  f"{bc['platform_paused']}; longest gap after the backchannel p50 "
                  f"{_f(bc['longest_gap_after_ms']['p50'], ' ms')}.", ""]
    bus = rep.get("bus")
    if bus:
        lines += ["## Bus overhead (one NATS hop, publish → receive)", "",
                  "| phase | load | audio p50 | audio p99 | event ack p50 | event ack p99 | "
                  "event → pull (1) p50 | p99 | event → pull (8, 1 s) p50 | p99 |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for p in bus["phases"]:
            a, e = p["audio"]["latency_ms"], p["events"]
            lines.append(
                f"| {p['phase']} | {p['audio_msgs_per_s']} frames/s + {p['events_per_s']:.0f} events/s | "
                f"{_f(a['p50'], ' ms')} | {_f(a['p99'], ' ms')} | {_f(e['publish_to_ack_ms']['p50'], ' ms')} | "
                f"{_f(e['publish_to_ack_ms']['p99'], ' ms')} | "
                f"{_f(e['publish_to_receive_ms_fetch_1']['p50'], ' ms')} | "
                f"{_f(e['publish_to_receive_ms_fetch_1']['p99'], ' ms')} | "
                f"{_f(e['publish_to_receive_ms_fetch_8_timeout_1s']['p50'], ' ms')} | "
                f"{_f(e['publish_to_receive_ms_fetch_8_timeout_1s']['p99'], ' ms')} |")
        lines.append("")
    sw = rep.get("sweep")
    if sw:
        lines += ["## Concurrency sweep", "",
                  "| calls | turns | no reply | v2v p50 | v2v p95 | v2v p99 | greeting p50 | late frames | underruns | "
                  "CPU % (services, of one core) | CPU %/call | RSS growth/call | machine busy (all cores) |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for st in sw["steps"]:
            tot = st["resources"].get("_total", {})
            v2 = st["voice_to_voice_ms"]
            lines.append(
                f"| {st['calls']} | {st['turns']} | {st['turns_without_reply']} | {_f(v2['p50'], ' ms')} | "
                f"{_f(v2['p95'], ' ms')} | {_f(v2['p99'], ' ms')} | {_f(st['greeting_ms']['p50'], ' ms')} | "
                f"{st['playout']['late_frames']} ({_f(st['playout']['late_frames_pct'], '%')}) | "
                f"{st['playout']['underruns']} | {_f(tot.get('cpu_pct'))} | {_f(tot.get('cpu_pct_per_call'))} | "
                f"{_f(tot.get('rss_growth_per_call_mb'), ' MB')} | {_f(tot.get('machine_cpu_pct_all_cores'), '%')} |")
        lines += ["", "Where the time goes per step (p50 / p95 of the platform's stages):", "",
                  "| calls | end of turn | stt | LLM first token | LLM first sentence | bus and playout | "
                  "not in any stage (queues, hops) |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for st in sw["steps"]:
            sm = st.get("stages_ms", {})

            def pp(name: str, sm: dict[str, Any] = sm) -> str:
                x = sm.get(name, {})
                return f"{_f(x.get('p50'))} / {_f(x.get('p95'))} ms"

            lines.append(f"| {st['calls']} | {pp('end_of_turn_ms')} | {pp('stt_ms')} | {pp('llm_first_token_ms')} | "
                         f"{pp('llm_first_sentence_ms')} | {pp('bus_and_playout_ms')} | {pp('between_stages_ms')} |")
        k = sw["knee"]
        lines += ["", f"Knee: up to **{k['last_good_calls']}** simultaneous calls voice-to-voice p95 stays under twice "
                  f"the one-call p95 ({_f(k['baseline_p95_ms'], ' ms')}); "
                  + (f"at {k['first_bad_calls']} calls: {k['reason']}." if k["first_bad_calls"] else f"{k['reason']}.")
                  + " Late frames: agent audio arriving more than 20 ms after the previous frame's due time "
                  "(bursts); underruns: the caller's playout ran dry mid-reply (audible).", ""]
    so = rep.get("soak")
    if so:
        lines += ["## Soak", "", f"{so['calls']} calls ({so['calls_failed']} failed), {so['call_minutes']} "
                  f"call-minutes over {so['minutes']} min at {so['concurrency']} concurrent; v2v p50 "
                  f"{_f(so['voice_to_voice_ms']['p50'], ' ms')}, p95 {_f(so['voice_to_voice_ms']['p95'], ' ms')}.", "",
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
        for name, k in so["kv"].items():
            lines.append(f"| {name} | {_f(k['before'])} | {_f(k['after'])} | {k['left_by_soak_calls']} |")
        lines.append("")
    pe = rep.get("peer")
    if pe:
        lines += ["## Peer comparison: stock Pipecat pipeline, same models, same caller, alternating runs", "",
                  "| | ours p50 | ours p95 | pipecat p50 | pipecat p95 | ratio p50 (pipecat/ours) | ratio p95 |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for key, label in (("voice_to_voice_ms", "voice-to-voice"),
                           ("voice_to_voice_audible_ms", "voice-to-voice (audible)"),
                           ("greeting_ms", "greeting"), ("onset_to_clear_ms", "barge-in → clear"),
                           ("onset_to_last_agent_frame_ms", "barge-in → last frame"),
                           ("agent_audio_heard_after_onset_ms", "barge-in: agent audio after onset")):
            o, p, r = pe["ours"].get(key, {}), pe["pipecat"].get(key, {}), pe["ratio"].get(key, {})
            lines.append(f"| {label} | {_f(o.get('p50'), ' ms')} | {_f(o.get('p95'), ' ms')} | "
                         f"{_f(p.get('p50'), ' ms')} | {_f(p.get('p95'), ' ms')} | {_f(r.get('p50'))} | "
                         f"{_f(r.get('p95'))} |")
        lines += ["", f"Turns: ours {pe['ours'].get('turns')}, pipecat {pe['pipecat'].get('turns')}; without reply: "
                  f"ours {pe['ours'].get('turns_without_reply')}, pipecat {pe['pipecat'].get('turns_without_reply')}."]
        for name in ("ours", "pipecat"):
            bc = pe[name].get("backchannel")
            if bc:
                lines.append(f"Backchannel on {name}: {bc['false_barge_ins']} false barge-ins in "
                             f"{bc['during_agent_speech']}; longest gap in the agent's audio after it p50 "
                             f"{_f(bc['longest_gap_after_ms']['p50'], ' ms')}.")
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
