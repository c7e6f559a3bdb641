"""`make bench` in miniature: one call, two turns, measured end to end with the per-stage breakdown."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from voice_runtime.bus import Bus

from bench.run import smoke

from .conftest import PUBLIC, TWILIO_TOKEN, Platform, configure_agent

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]


async def test_bench_smoke_one_call_two_turns(platform: Platform, platform_bus: Bus, tmp_path: Path) -> None:
    number = "+15550142"
    await configure_agent(platform_bus, number, system_prompt="You are a phone assistant. Answer in one sentence.")
    rep = await asyncio.to_thread(smoke, platform.ingress, platform.nats_url, auth_token=TWILIO_TOKEN,
                                  public_base_url=PUBLIC, to=number, out=tmp_path)
    call, v = rep["call"], rep["voice_to_voice"]
    assert call["error"] is None, call["error"]
    assert call["greeting_ms"] is not None and call["greeting_ms"] > 0
    assert len(call["turns"]) == 2
    for turn in call["turns"]:
        assert turn["error"] is None, turn
        assert 0 < turn["v2v_ms"] < 30_000, turn
    assert v["voice_to_voice_ms"]["n"] == 2
    assert v["voice_to_voice_ms"]["p95"] is None and "p95" in v["voice_to_voice_ms"]["omitted"]  # n too small
    assert call["connected_s"] is not None and call["send_lag_max_ms"] is not None
    # no row for a stage the platform never fills (tts_first_audio_ms, today)
    assert all(s["n"] >= 1 for name, s in v["stages_ms"].items() if name != "between_stages_ms"), v["stages_ms"]
    # the platform's own view of the same turns arrived and was joined to the caller's measurement
    assert v["turns_with_breakdown"] >= 1, call["turns"]
    assert v["stages_ms"]["voice_to_voice_ms"]["n"] >= 1
    assert (tmp_path / "smoke.json").is_file()
