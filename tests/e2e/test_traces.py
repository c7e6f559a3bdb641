"""One OpenTelemetry trace per turn across media, stt, brain, tts and ingress (in-memory exporter).

The stages run in this process (so one in-memory exporter sees every span) but talk only over a
real NATS server of their own; ingress serves a real WebSocket driven by the Twilio caller.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY
from voice_brain.service import BrainService
from voice_brain.settings import BrainSettings
from voice_ingress.service import IngressService
from voice_ingress.settings import IngressSettings
from voice_media.service import MediaService
from voice_media.settings import MediaSettings
from voice_runtime import telemetry
from voice_stt.service import SttService
from voice_stt.settings import SttSettings
from voice_tts.service import TtsService
from voice_tts.settings import TtsSettings

from bench.twilio_caller import TwilioCaller

from ..brain.fake_openai import FakeOpenAI, Script
from ..conftest import free_port
from .conftest import PUBLIC, TWILIO_TOKEN, speech

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

STAGES = {"media end_of_turn", "stt transcribe", "brain llm", "tts synthesize", "ingress first_audio"}


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def stack(private_nats_url: str) -> AsyncIterator[dict[str, Any]]:
    exporter = InMemorySpanExporter()
    telemetry.setup_tracing("e2e", None, SimpleSpanProcessor(exporter))
    llm = FakeOpenAI(script=Script(text="We open at eight in the morning. Fresh bread is ready by nine."))
    llm.start()
    common: dict[str, Any] = {"nats_url": private_nats_url, "llm_base_url": llm.base_url}
    services = [MediaService(MediaSettings(**common)), SttService(SttSettings(**common)),
                BrainService(BrainSettings(**common)), TtsService(TtsSettings(**common))]
    for s in services:
        await s.start()
    port = free_port()
    # Twilio requests signed as in production (ingress refuses unsigned ones unless told otherwise)
    ingress = IngressService(IngressSettings(**common, http_port=port, twilio_auth_token=TWILIO_TOKEN,
                                             public_base_url=PUBLIC, twilio_allow_unsigned=False))
    server = uvicorn.Server(uvicorn.Config(ingress.app(), host="127.0.0.1", port=port, log_level="error"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    try:
        yield {"exporter": exporter, "url": f"http://127.0.0.1:{port}"}
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)
        for s in reversed(services):
            await s.stop()
        llm.stop()


async def test_each_turn_is_one_trace_through_every_stage(stack: dict[str, Any]) -> None:
    exporter: InMemorySpanExporter = stack["exporter"]
    before_v2v = metric("voice_turn_stage_seconds_count", service="brain", stage="voice_to_voice")
    before_in = metric("voice_audio_frames_total", service="ingress", direction="in", outcome="ok")
    questions = [speech("What time do you open tomorrow?"), speech("Do you have fresh bread?")]
    c = TwilioCaller(stack["url"], auth_token=TWILIO_TOKEN, public_base_url=PUBLIC, to="+15550300")
    await c.dial()
    await c.connect()
    try:
        assert await c.wait_for_audio(0, 30), "no greeting"
        await c.wait_for_silence(0.8, 30)
        for q in questions:
            c.say(q)
            await asyncio.sleep(len(q) / 8000)
            assert await c.wait_for_audio(time.monotonic() + 0.3, 30), "no reply"
            await c.wait_for_silence(1.0, 30)
    finally:
        await c.hangup()
    await asyncio.sleep(1.0)

    spans = exporter.get_finished_spans()
    roots = [s for s in spans if s.name == "media end_of_turn"]
    assert len(roots) == len(questions), [s.name for s in spans]
    for root in roots:
        trace_spans = [s for s in spans if s.context.trace_id == root.context.trace_id]
        names = {s.name for s in trace_spans}
        assert STAGES <= names, f"missing {STAGES - names} in {sorted(names)}"
        assert root.parent is None
        turn = root.attributes["turn_id"]
        assert all(s.attributes.get("turn_id") in (turn, None) for s in trace_spans if s.attributes
                   and "turn_id" in s.attributes), "a span of another turn joined this trace"
        assert not any(c.call_id in s.name for s in trace_spans), "span names must not carry ids"
        llm = next(s for s in trace_spans if s.name == "brain llm")
        assert {"first_token", "first_sentence"} <= {e.name for e in llm.events}
        assert "first_audio" in {e.name for e in next(s for s in trace_spans if s.name == "tts synthesize").events}
    # the metrics moved with the call
    assert metric("voice_turn_stage_seconds_count", service="brain", stage="voice_to_voice") >= before_v2v + 2
    assert metric("voice_audio_frames_total", service="ingress", direction="in", outcome="ok") > before_in + 100
