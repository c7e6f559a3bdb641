"""The `make bench` report: no never-filled rows, no zeros standing in for missing data, n next to every
percentile, and a headline that lists the unfavourable figures of the run with the favourable ones."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from bench.calls import BackchannelTrial, BargeInResult, BargeInTrial, CallResult, Playout, TurnResult
from bench.events import PlatformEvents
from bench.report import barge_in_figures, call_figures, markdown, turn_figures

pytestmark = pytest.mark.unit

# what a turn.completed carries without tts's figure (a tts or ingress older than playout.started's
# tts_first_audio_ms; voice_brain.conversation.turn_completed)
BRAIN_LATENCY = {"end_of_turn_ms": 368.0, "stt_ms": 891.0, "llm_first_token_ms": 196.0,
                 "llm_first_sentence_ms": 510.0, "tts_first_audio_ms": None, "bus_and_playout_ms": 256.0,
                 "voice_to_voice_ms": 2206.0}


class _Msg:
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = json.dumps(data).encode()


def _turn_event(latency: dict[str, Any]) -> dict[str, float | None]:
    ev = PlatformEvents()
    asyncio.run(ev._on_turn(_Msg({"call_id": "c1", "turn_id": "t1", "data": {  # type: ignore[arg-type]
        "caller_text": "hi", "agent_text": "hello", "caller_ended_at": "2026-01-01T00:00:00Z",
        "latency": latency}})))
    return ev.turns["c1"][0].latency


def _turns(n: int, v2v: float = 2200.0) -> list[TurnResult]:
    return [TurnResult("c1", i, "q", 2.0, v2v_ms=v2v + i, v2v_audible_ms=v2v + 40 + i, reply_audio_s=5.0,
                       stages=_turn_event(BRAIN_LATENCY)) for i in range(n)]


def test_tts_first_audio_and_the_overhead_are_reported_only_when_a_turn_carries_them() -> None:
    stages = turn_figures(_turns(3))["stages_ms"]
    assert "tts_first_audio_ms" not in stages and stages["platform_overhead_ms"]["n"] == 0
    assert all(s["n"] == 3 for name, s in stages.items() if name not in ("between_stages_ms", "platform_overhead_ms"))
    # once a turn.completed does carry it, it is reported
    assert _turn_event({**BRAIN_LATENCY, "tts_first_audio_ms": 62.0})["tts_first_audio_ms"] == 62.0
    filled = [TurnResult("c1", 0, "q", 2.0, v2v_ms=2000.0,
                         stages=_turn_event({**BRAIN_LATENCY, "tts_first_audio_ms": 62.0}))]
    assert turn_figures(filled)["stages_ms"]["tts_first_audio_ms"]["n"] == 1


def test_a_call_that_never_connected_reports_no_send_lag_and_no_jitter() -> None:
    failed = CallResult("platform", error="ConnectionRefusedError: ...")
    assert failed.connected_s is None and failed.send_lag_max_ms is None
    fig = call_figures([failed])
    assert fig["caller_send_lag_max_ms"] is None and fig["calls_without_send_lag"] == 1
    assert fig["playout"]["jitter_p99_ms_worst_call"] is None
    ok = CallResult("platform", send_lag_max_ms=4.2, playout=Playout(frames=10, jitter_ms={"p99": 3.0}))
    fig = call_figures([failed, ok])
    assert fig["caller_send_lag_max_ms"] == 4.2 and fig["playout"]["jitter_p99_ms_worst_call"] == 3.0


def test_backchannels_without_a_pause_measurement_are_counted_not_averaged() -> None:
    bcs = [BackchannelTrial(300, paused_ms=680.0, silence_heard_ms=660.0, continued=True),
           BackchannelTrial(300, continued=False)]
    bc = barge_in_figures([BargeInResult("platform", backchannels=bcs)])["backchannel"]
    assert bc["longest_gap_received_ms"]["n"] == 1 and bc["longest_gap_received_ms"]["missing"] == 1
    assert bc["longest_gap_received_ms"]["p50"] == 680.0
    assert bc["longest_silence_heard_ms"]["p50"] == 660.0


# --------------------------------------------------------------------------- markdown
MACHINE = {"cpu_model": "AMD EPYC", "cores_logical": 2, "memory_gb": 23.5, "load_average_at_start": [0.5, 0.5, 0.5],
           "git": {"commit": "0123456789abcdef", "dirty": False},
           "models": {"services": {"stt": {}, "tts": {}}, "llm_served": ["smollm2"]}}


def _report(**parts: Any) -> dict[str, Any]:
    return {"mode": "bench", "started_at": "2026-11-21T14:59:04+0000", "config": {"url": "http://127.0.0.1:8080"},
            "machine": MACHINE, "duration_s": 376.0, "notes": [], **parts}


def _barge_in() -> BargeInResult:
    trials = [BargeInTrial(onset_to_clear_ms=563.0 + i, onset_to_stop_hearing_ms=131.0 + i,
                           onset_to_last_frame_received_ms=111.0 + i, audio_played_after_onset_ms=120.0,
                           audio_received_after_onset_ms=100.0, audio_dropped_by_clear_ms=0.0, frames_after_clear=0)
              for i in range(3)]
    trials.append(BargeInTrial(onset_to_clear_ms=1677.0))  # nothing of the reply played after the onset
    bcs = [BackchannelTrial(309, paused_ms=668.0, silence_heard_ms=650.0, continued=True, platform_pause=True)
           for _ in range(4)]
    return BargeInResult("platform", "c", trials, bcs)


def _calls() -> list[CallResult]:
    return [CallResult("platform", greeting_ms=140.0 + k, turns=_turns(5),
                       playout=Playout(frames=1590, late_frames=493, underruns=3, underrun_ms=120.0))
            for k in range(4)]


def test_every_percentile_comes_with_its_n_and_p95_is_not_quoted_from_four_values() -> None:
    md = markdown(_report(voice_to_voice=call_figures(_calls()), barge_in=barge_in_figures([_barge_in()])))
    greeting = next(line for line in md.splitlines() if line.startswith("| greeting"))
    assert greeting.split("|")[2].strip() == "4" and "n too small" in greeting
    clear = next(line for line in md.splitlines() if line.startswith("| speech onset → `clear`"))
    assert "n too small" in clear and "737" not in clear
    stops = next(line for line in md.splitlines() if "caller stops hearing the agent (playout clock) |" in line)
    assert stops.split("|")[2].strip() == "3 (+1 missing)"
    v2v = next(line for line in md.splitlines() if line.startswith("| voice-to-voice |"))
    assert v2v.split("|")[2].strip() == "20" and "n too small" not in v2v.split("|")[4]  # p95 from 20 turns
    assert "n too small" in v2v.split("|")[5]  # p99 needs 100


def test_headline_lists_the_unfavourable_figures_of_the_run_with_their_n() -> None:
    md = markdown(_report(voice_to_voice=call_figures(_calls()), barge_in=barge_in_figures([_barge_in()])))
    head = md.split("## Headline", 1)[1].split("\n## ", 1)[0]
    assert md.index("## Headline") < md.index("## Voice-to-voice")
    assert "voice-to-voice (one call at a time): p50 2,202 ms, p95 2,204 ms (n=20)" in head
    assert "greeting: p50 142 ms, p95 n too small (n=4)" in head
    assert "late frames 31.0% (1972 of 6360 frames over 4 calls)" in head
    assert "underruns 12 totalling 480 ms" in head
    assert "caller stops hearing the agent (playout clock): p50 132 ms, p95 n too small (n=3; 1 missing)" in head
    assert "speech onset → `clear`: p50 564 ms, p95 n too small (n=4)" in head
    assert "silence heard in the agent's audio after it p50 650 ms (n=4)" in head
    assert "Not measured in this run: peer comparison" in head


def test_peer_headline_names_the_figures_where_we_lose() -> None:
    def side(clear: float, stops: float, late: float) -> dict[str, Any]:
        calls = _calls()
        f = call_figures(calls)
        b = barge_in_figures([BargeInResult("x", trials=[BargeInTrial(onset_to_clear_ms=clear + i,
                                                                       onset_to_stop_hearing_ms=stops + i)
                                                          for i in range(2)])])
        f["playout"]["late_frames_pct"] = late
        return {**f, "onset_to_clear_ms": b["onset_to_clear_ms"],
                "onset_to_caller_stops_hearing_ms": b["onset_to_caller_stops_hearing_ms"]}

    peer = {"ours": side(1677.0, 150.0, 31.0), "pipecat": side(462.0, 470.0, 2.0), "ratio": {}, "notes": []}
    md = markdown(_report(mode="peer", peer=peer))
    head = md.split("## Headline", 1)[1].split("\n## ", 1)[0]
    assert "behind Pipecat on" in head and "barge-in → clear p50" in head and "late frames" in head
    row = next(line for line in head.splitlines() if line.startswith("| **barge-in → clear p50"))
    assert "1,678 ms (n=2)" in row and "462 ms (n=2)" in row and row.rstrip(" |").endswith("pipecat")
    stops = next(line for line in head.splitlines() if "caller stops hearing (playout clock) p50" in line)
    assert stops.rstrip(" |").endswith("ours")


def test_a_reply_begun_early_counts_only_its_model_time_after_the_transcript() -> None:
    early = {**BRAIN_LATENCY, "llm_first_sentence_ms": 300.0, "early_start_ms": 120.0}
    turns = [TurnResult("c1", 0, "q", 2.0, v2v_ms=2200.0, stages=_turn_event(early))]
    fig = turn_figures(turns)
    # 2206 - (368 + 891 + (300 - 120) + 256)
    assert fig["stages_ms"]["between_stages_ms"]["p50"] == 511.0
    assert fig["stages_ms"]["early_start_ms"]["n"] == 1


def test_the_end_of_turn_phase_reports_each_kind_and_tells_a_cut_off_sentence() -> None:
    from bench.eot import KINDS, Asked, cut_off
    from bench.report import eot_headline, eot_section
    from bench.speech import Utterance

    paused = Asked("paused", Utterance("I would like to book a table for … four people", b""),
                   "I would like to book a table for")
    assert cut_off(paused, "four people at eight.") is True
    assert cut_off(paused, "I would like to book a table for four people at eight.") is False
    assert cut_off(paused, None) is None and cut_off(Asked("short", Utterance("Yes", b""), ""), "Yes") is None
    empty = {"n": 0, "missing": 0}
    kinds = {k: {"asked": 2, "answered": 2, "end_of_turn_ms": {"n": 2, "p50": 250.0, "missing": 0},
                 "voice_to_voice_ms": empty, "early_start": {"turns": 2, "begun_early": 1, "early_start_ms": empty},
                 "cut_off": {"told": 2, "cut": 1} if k == "paused" else None,
                 "examples": [{"said": "x", "heard": None}]} for k in KINDS}
    eo = {"calls": 1, "errors": [], "pause_s": 0.8, "kinds": kinds, "early_start": {"turns": 8, "begun_early": 4}}
    line = eot_headline(eo)
    assert "cut off in 1 of 2" in line and "4 of 8 turns" in line and "question p50 250 ms" in line
    table = "\n".join(eot_section(eo))
    assert "| paused | 2 | 2 | 250 ms |" in table and "| 1 of 2 |" in table


def test_the_platform_overhead_is_voice_to_voice_minus_what_the_stages_computed() -> None:
    early = {**BRAIN_LATENCY, "llm_first_sentence_ms": 300.0, "early_start_ms": 120.0, "tts_first_audio_ms": 62.0}
    fig = turn_figures([TurnResult("c1", 0, "q", 2.0, v2v_ms=2200.0, stages=_turn_event(early))])
    # 2206 - (368 + 891 + (300 - 120) + 62): the hops, queues, bus and playout
    assert fig["stages_ms"]["platform_overhead_ms"]["p50"] == 705.0
    # and it is never guessed for a turn without tts's figure
    fig = turn_figures([TurnResult("c1", 0, "q", 2.0, v2v_ms=2200.0, stages=_turn_event(BRAIN_LATENCY))])
    assert fig["stages_ms"]["platform_overhead_ms"]["n"] == 0


def test_the_machine_line_names_the_cpu_and_its_vector_instruction_sets() -> None:
    from bench.machine import cpu_model

    info = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 fma\n\nprocessor\t: 1\nmodel name\t: x\n"
    assert cpu_model(info) == "AMD EPYC (avx2 fma)"
    assert cpu_model("model name\t: Old\nflags\t: fpu sse2\n") == "Old (no AVX2)"
    assert cpu_model(info.replace("avx2 fma", "avx2 fma avx512f amx_tile")) == "AMD EPYC (avx2 fma avx512f amx_tile)"
