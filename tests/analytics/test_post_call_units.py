"""The pure pieces of the post-call analysis: KPIs, the CSAT estimate, cost from a price table, the extractive
summary, and how a model's summary answer is judged and its prompt bounded."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from voice_analytics import csat, extractive
from voice_analytics.cost import DEFAULT_PRICES, PriceTable, Usage, cost_of, usage_of
from voice_analytics.kpis import TurnTimes, compute, longest_silence_s, percentile
from voice_analytics.summary import (
    MAX_TAGS,
    Line,
    Unusable,
    messages_of,
    parse_answer,
    transcript_text,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 5, 10, 0, 0, tzinfo=UTC)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def turn(speaker: str, start: float, end: float, *, interrupted: bool = False, v2v: float | None = None) -> TurnTimes:
    return TurnTimes(speaker, at(start), at(end), interrupted, v2v)  # type: ignore[arg-type]


# ------------------------------------------------------------------ KPIs
def test_kpis_of_a_call() -> None:
    turns = [
        turn("agent", 1, 3),  # greeting
        turn("caller", 4, 6),
        turn("agent", 7, 11, v2v=900),
        turn("caller", 10.5, 12),  # barges in (overlap is no silence)
        turn("agent", 12.5, 13, interrupted=True, v2v=700),
        turn("caller", 20, 21),  # 7 s of silence before it
        turn("agent", 22, 24, v2v=1500),
    ]
    k = compute(at(0), at(0.5), at(25), turns, [0.0, -0.2, 0.4])
    assert k.handle_time_s == 24.5  # answered -> ended
    assert k.caller_talk_s == 4.5 and k.agent_talk_s == 8.5
    assert k.agent_talk_listen_ratio == round(8.5 / 4.5, 3) and k.caller_talk_listen_ratio == round(4.5 / 8.5, 3)
    assert k.caller_turns == 3 and k.agent_turns == 4
    assert k.interruptions == 1
    assert k.longest_silence_s == 7.0
    assert k.agent_latency_p50_ms == 900 and k.agent_latency_p95_ms == 1500
    assert k.csat_estimate == csat.estimate([0.0, -0.2, 0.4])
    d = k.as_dict()
    assert d["interruptions"] == 1.0 and all(isinstance(v, float) for v in d.values())


def test_kpis_without_turns_or_answer() -> None:
    k = compute(at(0), None, at(30), [], [])
    assert k.handle_time_s == 30.0  # started -> ended when never answered
    assert k.caller_talk_s == 0 and k.agent_talk_listen_ratio is None and k.longest_silence_s is None
    assert k.agent_latency_p50_ms is None and k.csat_estimate is None
    assert set(k.as_dict()) == {"handle_time_s", "caller_talk_s", "agent_talk_s", "caller_turns", "agent_turns",
                                "interruptions"}
    assert compute(at(0), None, None, [], []).handle_time_s is None


def test_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 21)]  # 1..20
    assert percentile(values, 50) == 10 and percentile(values, 95) == 19 and percentile(values, 100) == 20
    assert percentile([5.0], 95) == 5.0 and percentile([], 50) is None


def test_longest_silence_ignores_turns_without_times() -> None:
    turns = [turn("agent", 0, 1), TurnTimes("caller", None, at(9)), turn("caller", 3, 4)]
    assert longest_silence_s(turns) == 2.0


# ------------------------------------------------------------------ CSAT
@pytest.mark.parametrize(
    "rolling,expected",
    [
        ([0.0], 3.0),  # neutral throughout
        ([0.0, 1.0], 5.0),  # ends delighted
        ([0.0, -1.0], 1.0),  # ends furious
        ([-1.0, -1.0], 1.6),  # angry throughout: 1 + 4 * (0.5 - 0.35)
        ([-0.8, 0.5], 4.48),  # turned round: 1 + 4 * (0.5 + 0.175 + 0.195)
        ([1.0, 1.0], 4.4),
    ],
)
def test_csat_formula(rolling: list[float], expected: float) -> None:
    assert csat.estimate(rolling) == pytest.approx(expected)


def test_csat_without_scores_is_none() -> None:
    assert csat.estimate([]) is None


# ------------------------------------------------------------------ cost
PRICES = PriceTable(
    currency="EUR",
    telephony_per_minute=Decimal("0.0085"),
    stt_per_minute=Decimal("0.006"),
    llm_input_per_1k_tokens=Decimal("0.00015"),
    llm_output_per_1k_tokens=Decimal("0.0006"),
    tts_per_1k_chars=Decimal("0.015"),
)


def test_cost_matches_the_price_table() -> None:
    usage = Usage(telephony_s=90.0, stt_audio_s=30.0, llm_input_tokens=12_000, llm_output_tokens=800,
                  tts_characters=2_500)
    c = cost_of(usage, PRICES)
    assert c.currency == "EUR"
    assert c.telephony == Decimal("0.012750")  # 1.5 min * 0.0085
    assert c.stt == Decimal("0.003000")  # 0.5 min * 0.006
    assert c.llm_input == Decimal("0.001800")  # 12 * 0.00015
    assert c.llm_output == Decimal("0.000480")  # 0.8 * 0.0006
    assert c.tts == Decimal("0.037500")  # 2.5 * 0.015
    assert c.total == Decimal("0.055530")
    assert c.lines()["total"] == "0.055530"


def test_cost_lines_round_half_up_to_six_places() -> None:
    c = cost_of(Usage(llm_input_tokens=1), PriceTable(llm_input_per_1k_tokens=Decimal("0.0005")))
    assert c.llm_input == Decimal("0.000001")  # 0.0000005 rounds up


def test_default_prices_cost_nothing() -> None:
    assert cost_of(Usage(telephony_s=600, llm_input_tokens=10**6), DEFAULT_PRICES).total == 0


def test_usage_by_channel() -> None:
    phone = usage_of("twilio", 60.0, 20.0, 100, 10, 300)
    assert (phone.telephony_s, phone.stt_audio_s, phone.tts_characters) == (60.0, 20.0, 300)
    web = usage_of("webrtc", 60.0, 20.0, 100, 10, 300)
    assert (web.telephony_s, web.stt_audio_s, web.tts_characters) == (0.0, 20.0, 300)
    chat = usage_of("chat", 60.0, 20.0, 100, 10, 300)
    assert (chat.telephony_s, chat.stt_audio_s, chat.tts_characters, chat.llm_input_tokens) == (0.0, 0.0, 0, 100)


# ------------------------------------------------------------------ extractive summary
LINES = [
    Line("agent", "Hi, Acme Dental, how can I help?"),
    Line("caller", "I need to move my appointment, the appointment on Friday."),
    Line("agent", "Sure, what day suits you?"),
    Line("caller", "Monday morning would work for the appointment."),
    Line("agent", "Done: Monday at nine. Goodbye!"),
]


def test_extractive_summary_is_deterministic() -> None:
    a = extractive.summarize(LINES, "agent_hangup", [0.0, 0.4], "the endpoint answered HTTP 500")
    assert a == extractive.summarize(LINES, "agent_hangup", [0.0, 0.4], "the endpoint answered HTTP 500")
    assert a.source == "extractive" and a.fallback_reason == "the endpoint answered HTTP 500"
    assert "I need to move my appointment" in a.summary and "Monday morning" in a.summary
    assert "Done: Monday at nine." in a.summary and "2 caller turns" in a.summary
    assert a.disposition == "resolved"
    assert a.tags[0] == "appointment" and "positive_sentiment" in a.tags and len(a.tags) <= MAX_TAGS


@pytest.mark.parametrize(
    "lines,end_reason,rolling,disposition",
    [
        ([Line("agent", "Hello?")], "caller_hangup", [], "no_conversation"),
        (LINES, "transferred", [], "transferred"),
        (LINES, "connection_lost", [], "dropped"),
        (LINES, "caller_hangup", [-0.6], "unresolved"),
        (LINES, "caller_hangup", [0.1], "other"),
    ],
)
def test_extractive_disposition(lines: list[Line], end_reason: str, rolling: list[float], disposition: str) -> None:
    assert extractive.summarize(lines, end_reason, rolling, "x").disposition == disposition


def test_extractive_quotes_are_bounded() -> None:
    s = extractive.summarize([Line("caller", "word " * 500)], None, [], "x")
    assert len(s.summary) < 400


# ------------------------------------------------------------------ the model's answer and the prompt
def test_a_json_answer_is_taken() -> None:
    s = parse_answer(json.dumps({"summary": " The caller moved  an appointment. ", "disposition": "Resolved",
                                 "tags": ["Appointment", "appointment", " dental ", 7, "x" * 100]}))
    assert s.summary == "The caller moved an appointment." and s.source == "llm"
    assert s.disposition == "resolved" and s.tags == ("appointment", "dental", "x" * 40)


def test_an_answer_wrapped_in_prose_and_fences_is_taken() -> None:
    s = parse_answer('Here you go:\n```json\n{"summary": "Moved.", "disposition": "call back", "tags": "no"}\n```')
    assert s.summary == "Moved." and s.disposition == "other" and s.tags == ()
    assert parse_answer('{"summary": "x", "disposition": "no conversation"}').disposition == "no_conversation"


@pytest.mark.parametrize("answer", [None, "", "I cannot do that.", "{not json}", '["summary"]', '{"summary": "  "}',
                                    '{"disposition": "resolved"}'])
def test_an_unusable_answer_is_refused(answer: str | None) -> None:
    with pytest.raises(Unusable):
        parse_answer(answer)


def test_the_prompt_is_bounded_and_keeps_head_and_tail() -> None:
    lines = [Line("caller" if i % 2 else "agent", f"utterance number {i} " + "blah " * 30) for i in range(200)]
    text = transcript_text(lines, 3000)
    assert len(text) <= 3000
    assert text.startswith("Agent: utterance number 0 ") and "utterance number 199 " in text
    assert "lines left out" in text
    short = transcript_text(LINES, 3000)
    assert short.splitlines()[1] == "Caller: I need to move my appointment, the appointment on Friday."
    messages = messages_of(LINES, "agent_hangup", 3000)
    assert messages[0]["role"] == "system" and "JSON" in messages[0]["content"]
    assert "agent_hangup" in messages[1]["content"] and short in messages[1]["content"]
    one_long = transcript_text([Line("caller", "x" * 5000)], 100_000)
    assert len(one_long) < 520  # each utterance is cut too
