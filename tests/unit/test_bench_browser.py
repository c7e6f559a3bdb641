"""The browser bench phase's arithmetic (bench/browser.py): the fake microphone's script, the page's clock, agent
audio segments and voice-to-voice per turn, on synthetic recordings whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from bench import report
from bench.browser import (
    BrowserCallResult,
    BrowserTurn,
    PageRecording,
    agent_segments,
    build_mic_script,
    figures,
    first_audio_ms,
    read_wav,
    turn_v2v,
)

RATE = 16_000
T0 = 1_700_000_000_000.0  # the page's Date.now() when the recording's first sample was received


def tone(seconds: float, rate: int = RATE, amp: float = 0.3) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return amp * np.sin(2 * np.pi * 300 * t)


def recording(parts: list[tuple[float, bool]], *, mic_lead_ms: float = 200.0, jitter: bool = True) -> PageRecording:
    """A recording made of (seconds, agent audible?) parts, with a block clock like the page's: a stamp per 2048
    samples, some stamped late (the page's main thread was busy), never early."""
    pcm = np.concatenate([tone(s) if loud else np.zeros(round(s * RATE)) for s, loud in parts])
    rng = np.random.default_rng(1)
    clock = []
    for end in range(2048, len(pcm) + 1, 2048):
        late = float(rng.choice([0.0, 0.0, 3.0, 40.0, 250.0])) if jitter else 0.0
        clock.append((end, T0 + end * 1000.0 / RATE + late))
    return PageRecording(pcm, RATE, T0 - mic_lead_ms, clock, "CAtest")


def test_mic_script_places_each_utterance_after_the_lead_and_its_gaps() -> None:
    u1, u2 = np.ones(4800, dtype=np.int16), np.ones(9600, dtype=np.int16)
    s = build_mic_script([u1, u2], 48_000, lead_s=10, gaps_s=[5, 3])
    assert s.speech == [(10.0, 10.1), (15.1, 15.3)]
    assert s.seconds == pytest.approx(18.3)
    assert not s.pcm[-3 * 48_000 :].any()  # ends in silence: Chromium repeats a %noloop file's last buffer
    pcm, rate = read_wav(s.wav())
    assert rate == 48_000 and len(pcm) == len(s.pcm)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lead_s": 1, "gaps_s": [1]}, "2 utterances but 1 gaps"),
        ({"lead_s": 1, "gaps_s": 0.1}, "at least 0.5 s"),
        ({"lead_s": -1, "gaps_s": 1}, "lead_s"),
    ],
)
def test_mic_script_refuses_bad_layouts(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_mic_script([np.ones(10, dtype=np.int16)] * 2, RATE, **kwargs)  # type: ignore[arg-type]


def test_segments_bridge_short_pauses_and_ignore_quiet_noise() -> None:
    pcm = np.concatenate(
        [np.zeros(RATE), tone(1.0), np.zeros(RATE // 5), tone(0.5), np.zeros(RATE), 0.001 * np.ones(RATE), tone(0.3)]
    )
    segs = [(round(s / RATE, 2), round(e / RATE, 2)) for s, e in agent_segments(pcm, RATE)]
    assert segs == [(1.0, 2.7), (4.7, 5.0)]  # a 200 ms pause is inside a reply; -60 dBFS hum is not audio
    assert agent_segments(np.zeros(10), RATE) == []


def test_the_clock_takes_the_least_delayed_block_and_inverts() -> None:
    rec = recording([(20.0, False)])
    for sample in (0, 12_345, 160_000, 300_000):
        assert rec.wall_ms(sample) == pytest.approx(T0 + sample * 1000.0 / RATE, abs=0.01)
        assert rec.sample_at(T0 + sample * 1000.0 / RATE) == pytest.approx(sample, abs=0.5)
    assert PageRecording(np.zeros(10), RATE, None, []).wall_ms(5) is None


def test_v2v_per_turn_from_the_question_end_to_the_first_agent_audio() -> None:
    # mic: file second 0 = T0 - 200 ms. Greeting at 0.5-3.5 s of the recording. Question 1 ends at file 8.2 s
    # (recording 8.0 s); the reply starts at 9.3 s: 1300 ms. Question 2 ends at file 20.2 s (recording 20.0 s);
    # its reply starts at 20.85 s: 850 ms.
    rec = recording([(0.5, False), (3.0, True), (5.8, False), (4.0, True), (7.55, False), (2.0, True), (3.0, False)])
    script = build_mic_script([np.ones(3200, dtype=np.int16)] * 2, RATE, lead_s=8.0, gaps_s=[11.8, 4.0])
    assert [e for _, e in script.speech] == [pytest.approx(8.2), pytest.approx(20.2)]
    turns = turn_v2v(rec, script)
    assert [t.v2v_ms for t in turns] == [pytest.approx(1300, abs=21), pytest.approx(850, abs=21)]
    assert all(t.why_missing is None for t in turns)
    assert first_audio_ms(rec) == pytest.approx(700, abs=21)


def test_a_turn_without_a_clean_measurement_is_missing_not_zero() -> None:
    # question 1 ends while the greeting still plays; question 2 gets nothing before the recording ends
    rec = recording([(0.5, False), (9.0, True), (12.0, False)])
    script = build_mic_script([np.ones(3200, dtype=np.int16)] * 2, RATE, lead_s=8.0, gaps_s=[5.0, 3.0])
    t1, t2 = turn_v2v(rec, script, reply_timeout_s=5.0)
    assert (t1.v2v_ms, t1.why_missing) == (None, "the agent was audible when the question ended")
    assert (t2.v2v_ms, t2.why_missing) == (None, "no agent audio before the next question or the timeout")
    no_mic = PageRecording(rec.pcm, RATE, None, rec.clock)
    assert [t.why_missing for t in turn_v2v(no_mic, script)] == [
        "the page has no clock for the microphone or the recording"
    ] * 2
    short = recording([(3.0, False)])
    assert turn_v2v(short, script)[0].why_missing == "the recording ended before the question did"


def test_figures_count_missing_turns_and_gate_p95_on_n() -> None:
    calls = [
        BrowserCallResult("CA1", 900.0, [BrowserTurn(5.0, 1000.0), BrowserTurn(9.0, None, "x")]),
        BrowserCallResult(None, None, [], "RuntimeError: the call did not connect"),
    ]
    f = figures(calls)
    assert (f["calls"], f["calls_failed"], f["turns"], f["turns_without_reply"]) == (2, 1, 2, 1)
    v = f["voice_to_voice_ms"]
    assert (v["n"], v["missing"], v["p50"], v["p95"]) == (1, 1, 1000.0, None)
    assert v["omitted"]["p95"] == "n too small (1 < 20)"
    assert f["first_audio_ms"]["missing"] == 1 and f["missing_reasons"] == {"x": 1}
    twenty = figures([BrowserCallResult("CA", 1.0, [BrowserTurn(1.0, float(i)) for i in range(20)])])
    assert twenty["voice_to_voice_ms"]["p95"] is not None


def test_the_report_headlines_browser_v2v_with_its_n() -> None:
    f = figures([BrowserCallResult("CA1", 900.0, [BrowserTurn(5.0, 1234.0), BrowserTurn(9.0, None, "x")])])
    lines = "\n".join(report.headline({"browser": f}))
    assert "browser voice-to-voice" in lines and "p50 1,234 ms" in lines and "p95 n too small" in lines
    assert "n=1; 1 missing" in lines and "1 of 2 turns got no reply" in lines
    skipped = "\n".join(report.headline({"browser": {**figures([]), "skipped": "no Chromium"}}))
    assert "browser voice-to-voice: not measured (no Chromium)" in skipped
