"""The Twilio adapter under generated input, without a socket: whatever a peer sends, ``decode`` returns events
or raises ``ProtocolError`` (the call then ends with ``protocol_error`` and a reason), never anything else, and a
binary frame on the stream is a protocol error too."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from voice_ingress.transports.base import ProtocolError
from voice_ingress.transports.twilio import TwilioMediaStream, text_messages

from bench.fuzz_ingress import frame_strategy, opening

pytestmark = pytest.mark.unit


def stream() -> TwilioMediaStream:
    return TwilioMediaStream(None, 16 * 1024)  # type: ignore[arg-type]  # decode never touches the socket


def decode_all(s: TwilioMediaStream, frames: list[Any]) -> None:
    for f in frames:
        try:
            s.decode(f)
        except ProtocolError:
            return


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(frame_strategy(), min_size=1, max_size=8))
def test_any_frames_before_a_start_are_events_or_a_protocol_error(frames: list[Any]) -> None:
    decode_all(stream(), frames)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(frame_strategy(), min_size=1, max_size=8))
def test_any_frames_on_a_started_stream_are_events_or_a_protocol_error(frames: list[Any]) -> None:
    s = stream()
    for f in opening("c1"):
        s.decode(f)
    decode_all(s, frames)


@pytest.mark.parametrize("raw,reason", [
    ("[" * 5000 + "]" * 5000, "nested too deeply"),
    (json.dumps({"event": "start", "start": {"mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 1e400}}}),
     "bad 'start' message"),
])
def test_hostile_json_is_a_protocol_error(raw: str, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        stream().decode(raw)


class FakeSocket:
    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self.messages = messages

    async def receive(self) -> dict[str, Any]:
        return self.messages.pop(0)


async def test_a_binary_frame_is_a_protocol_error() -> None:
    ws = FakeSocket([{"type": "websocket.receive", "text": "{}"}, {"type": "websocket.receive", "bytes": b"\x00"}])
    received = []
    with pytest.raises(ProtocolError, match="binary frame"):
        async for m in text_messages(ws):  # type: ignore[arg-type]
            received.append(m)
    assert received == ["{}"]


async def test_the_messages_end_when_the_peer_disconnects() -> None:
    ws = FakeSocket([{"type": "websocket.receive", "text": "a"}, {"type": "websocket.disconnect", "code": 1000}])
    assert [m async for m in text_messages(ws)] == ["a"]  # type: ignore[arg-type]
