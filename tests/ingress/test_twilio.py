"""The Twilio adapter's wire format: Media Streams messages ⇄ transport events, pure (no socket)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from voice_ingress.transports.base import CallerAudio, CallerHungUp, DtmfPressed, MarkPlayed, ProtocolError, Started
from voice_ingress.transports.twilio import TwilioMediaStream, parse_message
from voice_schemas.audio import FRAME_BYTES

pytestmark = pytest.mark.unit

SILENCE_B64 = base64.b64encode(b"\xff" * 160).decode()


def start_msg(**start: Any) -> str:
    body = {"streamSid": "MZ1", "callSid": "CA1", "customParameters": {"call_id": "c1"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}, **start}
    return json.dumps({"event": "start", "sequenceNumber": "1", "start": body})


def media_msg(payload: str = SILENCE_B64, track: str = "inbound") -> str:
    return json.dumps({"event": "media", "streamSid": "MZ1", "media": {"track": track, "payload": payload}})


def stream() -> TwilioMediaStream:
    return TwilioMediaStream(None, 16 * 1024)  # type: ignore[arg-type]  # decode/encode never touch the socket


# ---------------------------------------------------------------- wire format (pure)
def test_inbound_messages_become_events() -> None:
    s = stream()
    assert s.decode(json.dumps({"event": "connected", "protocol": "Call"})) == []
    assert s.decode(start_msg()) == [Started(call_id="c1", stream_id="MZ1")]
    frames: list[bytes] = []
    for _ in range(10):
        [audio] = s.decode(media_msg())
        assert isinstance(audio, CallerAudio)
        frames += audio.frames
    assert 9 <= len(frames) <= 10 and all(len(f) == FRAME_BYTES for f in frames)
    assert s.decode(media_msg(track="outbound")) == []
    assert s.decode(json.dumps({"event": "dtmf", "dtmf": {"digit": "#"}})) == [DtmfPressed("#")]
    assert s.decode(json.dumps({"event": "mark", "mark": {"name": "t:0:1"}})) == [MarkPlayed("t:0:1")]
    assert s.decode(json.dumps({"event": "stop", "stop": {}})) == [CallerHungUp()]


@pytest.mark.parametrize("messages,reason", [
    (["{nope"], "malformed JSON"),
    (["[1]"], "no event"),
    (['{"event": 5}'], "no event"),
    (["x" * 20000], "too large"),
    ([media_msg()], "'media' before start"),
    (['{"event": "bogus"}'], "'bogus' before start"),
    ([start_msg(), start_msg()], "duplicate start"),
    ([start_msg(mediaFormat={"encoding": "audio/x-l16", "sampleRate": 16000})], "unsupported media format"),
    ([start_msg(), '{"event": "bogus"}'], "unknown event 'bogus'"),
    ([start_msg(), media_msg(payload="not base64!")], "bad 'media' message"),
    ([start_msg(), '{"event": "media", "media": {}}'], "bad 'media' message"),
    ([start_msg(), '{"event": "dtmf", "dtmf": {"digit": "x"}}'], "invalid DTMF digit"),
])
def test_protocol_garbage_is_a_protocol_error_with_its_reason(messages: list[str], reason: str) -> None:
    s = stream()
    with pytest.raises(ProtocolError, match=reason):
        for m in messages:
            s.decode(m)


def test_parse_message_limits_size_before_parsing() -> None:
    with pytest.raises(ProtocolError, match="too large"):
        parse_message("x" * 100, limit=64)


def test_outbound_audio_marks_and_clear_are_twilio_messages() -> None:
    s = stream()
    s.decode(start_msg())
    pcm = b"\x10\x00" * (FRAME_BYTES // 2)
    msgs = [json.loads(m) for _ in range(5) for m in s.encode_audio(pcm)]
    msgs += [json.loads(m) for m in s.encode_audio(pcm, end_of_reply=True)]
    assert all(m["event"] == "media" and m["streamSid"] == "MZ1" for m in msgs)
    payloads = [base64.b64decode(m["media"]["payload"]) for m in msgs]
    assert all(len(p) == 160 for p in payloads) and 5 <= len(payloads) <= 7  # the flush pads the last frame
    assert [json.loads(m) for m in s.encode_mark("t1:0:2")] == [
        {"event": "mark", "streamSid": "MZ1", "mark": {"name": "t1:0:2"}}]
    assert [json.loads(m) for m in s.encode_clear()] == [{"event": "clear", "streamSid": "MZ1"}]


@pytest.mark.parametrize("stream_sid", ["MZ1", 'MZ"odd\\sid', ""])
def test_outbound_media_is_the_json_twilio_expects_whatever_the_stream_sid(stream_sid: str) -> None:
    """The media message is built from a head made once per stream: the same text as the message's JSON, the
    stream's own id in it (a second stream, or an id that needs escaping, gets its own)."""
    s = stream()
    s.decode(start_msg(streamSid=stream_sid))
    pcm = b"\x10\x00" * (FRAME_BYTES // 2)
    for _ in range(2):
        (m,) = s.encode_audio(pcm)
        payload = json.loads(m)["media"]["payload"]
        assert m == json.dumps({"event": "media", "streamSid": stream_sid, "media": {"payload": payload}})
        assert len(base64.b64decode(payload)) == 160
    (keys,) = [json.loads(x) for x in s.encode_dtmf("1")][-1:]
    assert keys["streamSid"] == stream_sid and keys["event"] == "media"
    other = stream()
    other.decode(start_msg(streamSid="MZ2"))
    assert json.loads(other.encode_audio(pcm)[0])["streamSid"] == "MZ2"
