"""What the platform says about the bench's calls: per-turn latency breakdowns and barge-in commands.

A plain (core) NATS subscription sees every JetStream-published event on its subject, so the bench
consumes nothing durable and leaves no consumer behind.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

# The stages of `turn.completed`'s latency breakdown that the platform fills. Its schema also has
# `tts_first_audio_ms`, which no service fills (the brain builds the breakdown and never learns when TTS made
# its first audio; `bus_and_playout_ms` covers TTS + hops): it is not listed, so no report shows an always-empty
# row. Any other stage an event does carry a number for is kept as well (see `_latency`).
STAGES = ("end_of_turn_ms", "stt_ms", "llm_first_token_ms", "llm_first_sentence_ms", "bus_and_playout_ms",
          "voice_to_voice_ms")


@dataclass
class TurnEvent:
    call_id: str
    turn_id: str | None
    received_at: float  # monotonic
    caller_text: str | None
    agent_text: str
    caller_ended_wall: float | None  # epoch seconds of the platform's speech offset
    interrupted: bool
    latency: dict[str, float | None]


@dataclass
class ControlEvent:
    call_id: str
    kind: str  # barge_in | pause | resume
    received_at: float


def _wall(iso: str | None) -> float | None:
    if not iso:
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    return None


def _latency(lat: dict[str, Any]) -> dict[str, float | None]:
    """The breakdown's listed stages (None where absent), plus any other stage that has a number."""
    out: dict[str, float | None] = {k: lat.get(k) for k in STAGES}
    for k, v in lat.items():
        if k not in out and isinstance(v, int | float) and not isinstance(v, bool):
            out[k] = float(v)
    return out


@dataclass
class PlatformEvents:
    turns: dict[str, list[TurnEvent]] = field(default_factory=lambda: defaultdict(list))
    controls: dict[str, list[ControlEvent]] = field(default_factory=lambda: defaultdict(list))
    nc: NATS | None = None
    errors: int = 0

    async def start(self, nats_url: str) -> None:
        async def quiet(e: Exception) -> None:  # nats-py prints a traceback per reconnect attempt by default
            self.errors += 1

        self.nc = await nats.connect(nats_url, name="bench-events", connect_timeout=5, error_cb=quiet)
        await self.nc.subscribe("call.*.turn.completed", cb=self._on_turn)
        await self.nc.subscribe("call.*.control.*", cb=self._on_control)

    async def stop(self) -> None:
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()

    async def _on_turn(self, msg: Msg) -> None:
        try:
            env: dict[str, Any] = json.loads(msg.data)
            d = env["data"]
            call_id = env["call_id"]
        except (ValueError, KeyError, TypeError):
            return
        lat = d.get("latency") or {}
        self.turns[call_id].append(TurnEvent(
            call_id=call_id, turn_id=env.get("turn_id"), received_at=time.monotonic(),
            caller_text=d.get("caller_text"), agent_text=d.get("agent_text") or "",
            caller_ended_wall=_wall(d.get("caller_ended_at")), interrupted=bool(d.get("interrupted")),
            latency=_latency(lat),
        ))

    async def _on_control(self, msg: Msg) -> None:
        parts = msg.subject.split(".")
        if len(parts) >= 4:
            self.controls[parts[1]].append(ControlEvent(parts[1], parts[3], time.monotonic()))

    def caller_turns(self, call_id: str) -> list[TurnEvent]:
        """turn.completed events of caller turns (the greeting has no caller text)."""
        return [t for t in self.turns.get(call_id, []) if t.caller_text is not None]

    def match(self, call_id: str, speech_end_wall: float, tolerance_s: float = 2.5) -> TurnEvent | None:
        """The caller turn whose speech offset (as the platform saw it) is nearest our last speech frame."""
        best: TurnEvent | None = None
        for t in self.caller_turns(call_id):
            if t.caller_ended_wall is None:
                continue
            d = abs(t.caller_ended_wall - speech_end_wall)
            if d <= tolerance_s and (best is None or d < abs((best.caller_ended_wall or 0) - speech_end_wall)):
                best = t
        return best
