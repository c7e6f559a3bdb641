"""A test caller: publishes what ingress would for one call and records what media publishes for it, on any
bus (real NATS or the in-memory one)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from voice_media.service import MediaService
from voice_runtime.ports import BusPort
from voice_schemas import Envelope, events, make, parse, subjects
from voice_schemas.audio import H_SEQ, H_TS
from voice_schemas.envelope import Payload

FRAME = 320
WATCHED = (events.SpeechStarted, events.SpeechStopped, events.UtteranceCaptured, events.PausePlayout,
           events.ResumePlayout, events.BargeIn)


class Call:
    """A test call: publishes what ingress would and records what media publishes (with arrival times)."""

    def __init__(self, bus: BusPort, media: MediaService, *, watch: tuple[type[Payload], ...] = ()) -> None:
        self.bus, self.media = bus, media
        self.watched: tuple[type[Payload], ...] = WATCHED + watch
        self.call_id = subjects.new_call_id()
        self.got: list[tuple[float, Envelope[Any]]] = []
        self.subs: list[Any] = []
        self._sent = 0  # frames sent so far: the next frame's media time is 20 ms each

    async def start(self) -> None:
        async def record(msg: Any) -> None:
            self.got.append((time.monotonic(), parse(msg.data)))

        for kind in self.watched:
            self.subs.append(await self.bus.subscribe(kind.subject_for(self.call_id), record))
        started = events.CallStarted(agent_id="default-agent", agent_version=1, channel=events.Channel.test)
        await self.bus.publish(make(started, tenant_id="default", call_id=self.call_id))
        deadline = time.monotonic() + 5
        while self.call_id not in self.media.calls:
            assert time.monotonic() < deadline, "media did not claim the call"
            await asyncio.sleep(0.01)

    async def agent_starts_speaking(self) -> None:
        await self.bus.publish(make(events.PlayoutStarted(), tenant_id="default", call_id=self.call_id,
                                    turn_id="agent-turn-1", epoch=0))
        await asyncio.sleep(0.1)

    async def speak(self, audio: np.ndarray, *, realtime: bool = True, frames_per_message: int = 1) -> float:
        """Stream 20 ms frames, each sent when its audio is complete (``realtime``) or as fast as the bus
        takes them (media time comes from the frames' timestamps); returns t0. ``frames_per_message``: consecutive
        frames back to back in one message, stamped as the last of them (as a loaded ingress sends them)."""
        subject = subjects.audio_in(self.call_id)
        t0 = time.monotonic()
        total = len(audio) // FRAME
        for first in range(0, total, frames_per_message):
            n = min(frames_per_message, total - first)
            delay = t0 + (first + n) * 0.02 - time.monotonic()
            if realtime and delay > 0:
                await asyncio.sleep(delay)
            last = self._sent + n - 1
            await self.bus.publish_nowait(subject, audio[first * FRAME : (first + n) * FRAME].tobytes(),
                                          {H_SEQ: str(last), H_TS: str(last * 20)})
            self._sent += n
        return t0

    def of(self, kind: type) -> list[tuple[float, Envelope[Any]]]:
        return [(t, e) for t, e in self.got if isinstance(e.data, kind)]

    def types(self) -> list[str]:
        return [e.type for _, e in self.got]

    async def wait_for(self, kind: type, timeout: float = 3.0) -> tuple[float, Envelope[Any]]:
        deadline = time.monotonic() + timeout
        while not self.of(kind):
            assert time.monotonic() < deadline, f"no {kind.__name__}; got {self.types()}"
            await asyncio.sleep(0.01)
        return self.of(kind)[0]

    async def end(self) -> None:
        await self.bus.publish(make(events.CallEnded(reason=events.EndReason.caller_hangup), tenant_id="default",
                                    call_id=self.call_id))
        deadline = time.monotonic() + 3
        while self.call_id in self.media.calls:
            assert time.monotonic() < deadline, "media kept the call after it ended"
            await asyncio.sleep(0.01)
        for s in self.subs:
            await s.unsubscribe()
