"""Contracts: envelope round-trips, subject safety, committed schema drift."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from voice_schemas import REGISTRY, UnknownEventType, events, make, parse, streams, subjects
from voice_schemas.audio import FRAME_BYTES, AudioFrame
from voice_schemas.generate import OUT, render

pytestmark = pytest.mark.unit

SAMPLES = {
    "call.started": events.CallStarted(agent_id="ag1", agent_version=3, channel="twilio", from_number="+15550001"),
    "transcript.final": events.TranscriptFinalized(utterance_id="u1", text="hello there", stt_ms=12.5),
    "reply.chunk": events.ReplyChunk(index=0, text="Hi.", final=True),
    "turn.completed": events.TurnCompleted(
        agent_text="Hi.", latency=events.LatencyBreakdown(stt_ms=300, voice_to_voice_ms=800)
    ),
    "control.barge_in": events.BargeIn(at_ms=1200, speech_ms=400),
    "call.ended": events.CallEnded(reason=events.EndReason.caller_hangup),
    "dtmf.received": events.DtmfReceived(digit="5"),
    "tool.approval_decided": events.ToolApprovalDecided(tool_call_id="t1", approved=True, decided_by="u1"),
    "analytics.sentiment": events.SentimentScored(speaker="caller", compound=-0.4, label="negative"),
}


def test_every_event_type_has_a_unique_subject() -> None:
    seen = {}
    for t, cls in REGISTRY.items():
        subj = cls.subject_for("CAabc")
        assert subj.startswith("call.CAabc."), t
        assert subj not in seen, f"{t} and {seen.get(subj)} share {subj}"
        seen[subj] = t
    assert len(REGISTRY) >= 25


@pytest.mark.parametrize("etype", sorted(SAMPLES))
def test_envelope_round_trip(etype: str) -> None:
    env = make(SAMPLES[etype], tenant_id="t1", call_id="CA123", turn_id="turn-1", epoch=2, seq=7)
    back = parse(env.to_bytes())
    assert back == env
    assert type(back.data) is type(SAMPLES[etype])
    assert back.type == etype and back.schema_version == 1
    assert back.subject == type(SAMPLES[etype]).subject_for("CA123")


def test_unknown_fields_are_ignored_for_additive_changes() -> None:
    env = make(SAMPLES["reply.chunk"], tenant_id="t", call_id="CA1")
    raw = env.model_dump(mode="json")
    raw["data"]["new_field"] = 1
    raw["future_top_level"] = "x"
    import json

    assert parse(json.dumps(raw)).data == env.data


def test_bad_events_are_rejected() -> None:
    with pytest.raises(UnknownEventType):
        parse(b'{"type": "nope"}')
    with pytest.raises(UnknownEventType):
        parse(b"[1,2]")
    with pytest.raises(ValidationError):
        parse(b'{"type": "dtmf.received", "tenant_id": "t", "call_id": "CA1", "data": {"digit": "55"}}')
    with pytest.raises(ValueError):
        parse(b"\xff not json")


@pytest.mark.parametrize("bad", ["", "a.b", "a*", ">", "a b", "ca\n", "x" * 65, "é", "a/b", "+1555"])
def test_subjects_reject_unsafe_ids(bad: str) -> None:
    with pytest.raises(subjects.InvalidSubjectToken):
        subjects.call_subject(bad, "audio", "in")
    with pytest.raises(subjects.InvalidSubjectToken):
        make(SAMPLES["reply.chunk"], tenant_id="t", call_id=bad)


@given(st.text(min_size=1, max_size=80))
def test_subject_never_widens(value: str) -> None:
    try:
        s = subjects.call_subject(value, "transcript", "final")
    except subjects.InvalidSubjectToken:
        return
    assert s.count(".") == 3 and "*" not in s and ">" not in s and " " not in s


def test_subject_helpers() -> None:
    cid = subjects.new_call_id()
    assert subjects.audio_in(cid) == f"call.{cid}.audio.in"
    assert subjects.call_id_of(subjects.audio_out(cid)) == cid
    assert subjects.pattern_of(f"call.{cid}.reply.text") == "call.*.reply.text"
    assert subjects.number_key("+15551234567") == "n15551234567"
    with pytest.raises(subjects.InvalidSubjectToken):
        subjects.number_key("+1 555*")


def test_streams_cover_every_durable_subject() -> None:
    assert all(c.subject_pattern() in streams.CALLS.subjects for c in REGISTRY.values())
    for c in streams.CONSUMERS:
        assert c.max_deliver > 1 and c.ack_wait_s > 0 and c.backoff_s
        assert set(c.filter_subjects) <= set(streams.CALLS.subjects)


def test_audio_frame_headers_round_trip() -> None:
    f = AudioFrame(pcm=b"\0" * FRAME_BYTES, seq=5, epoch=2, ts_ms=100, turn_id="t1", chunk=3, last_in_chunk=True)
    assert AudioFrame.from_message(f.pcm, f.headers()) == f
    timed = dataclasses.replace(f, synth_ms=61.5)
    assert AudioFrame.from_message(timed.pcm, timed.headers()) == timed
    for garbage in ("soon", "-1", "nan", "inf", "1e12"):  # a header is never trusted: no figure rather than a wrong one
        assert AudioFrame.from_message(f.pcm, {**f.headers(), "Voice-Synth-Ms": garbage}).synth_ms is None


def test_committed_schemas_match_models() -> None:
    rendered = render()
    stale = [rel for rel, content in rendered.items() if not (OUT / rel).exists() or (OUT / rel).read_text() != content]
    committed = {str(p.relative_to(OUT)) for p in (OUT / "jsonschema").rglob("*.json")}
    extra = committed - set(rendered)
    assert not stale and not extra, (
        f"schemas out of date ({stale[:5]}, stale extra {sorted(extra)[:5]}): run `make schemas` and commit"
    )
