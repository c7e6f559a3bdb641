"""Load benchmark of the media service: N concurrent calls of real-time caller audio.

``python -m bench.media_load --calls 20 --seconds 15`` starts a private nats-server (unless
``--nats`` is given) and ``python -m voice_media`` as a separate process, streams piper speech and
silence into N calls at 50 frames/s each, and reports the media process's CPU per 20 ms frame
(everything: NATS client, VAD, turn model, publishing), i.e. how many calls one core carries.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from voice_devstack.speech import speech_int16
from voice_devstack.stack import embedded_nats, free_port
from voice_runtime.bus import Bus
from voice_schemas import events, make, subjects
from voice_schemas.audio import H_SEQ, H_TS

FRAME = 320
TEXT = "Can you tell me what time you open on Sunday? I would like to come by with my family."


def _speech_loop() -> np.ndarray:
    return np.concatenate([speech_int16(TEXT), np.zeros(32_000, np.int16)])  # then 2 s of silence


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _call(bus: Bus, audio: np.ndarray, seconds: float, offset_s: float, counts: dict[str, int]) -> None:
    call_id = subjects.new_call_id()

    async def count(msg: object) -> None:
        counts["utterances"] += 1

    sub = await bus.nc.subscribe(events.UtteranceCaptured.subject_for(call_id), cb=count)
    started = events.CallStarted(agent_id="default-agent", agent_version=1, channel=events.Channel.test)
    await bus.publish(make(started, tenant_id="default", call_id=call_id))
    await asyncio.sleep(0.5 + offset_s)
    subject = subjects.audio_in(call_id)
    n = int(seconds * 50)
    start = (len(audio) // FRAME) * offset_s / 10  # calls start at different places of the loop
    t0 = time.monotonic()
    for i in range(n):
        delay = t0 + (i + 1) * 0.02 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        j = (int(start) + i) % (len(audio) // FRAME)
        await bus.nc.publish(subject, audio[j * FRAME : (j + 1) * FRAME].tobytes(),
                             headers={H_SEQ: str(i), H_TS: str(i * 20)})
        counts["frames"] += 1
    await bus.publish(make(events.CallEnded(reason=events.EndReason.caller_hangup), tenant_id="default",
                           call_id=call_id))
    await sub.unsubscribe()


async def _run(args: argparse.Namespace, nats_url: str) -> None:
    audio = _speech_loop()
    port = free_port()
    env = dict(os.environ, NATS_URL=nats_url, HTTP_PORT=str(port), LOG_LEVEL="WARNING",
               TURN_MODEL_ENABLED="false" if args.no_turn_model else "true")
    media = await asyncio.create_subprocess_exec(sys.executable, "-m", "voice_media", env=env,
                                                 stdout=asyncio.subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient() as http:
            while True:
                try:
                    if (await http.get(f"http://127.0.0.1:{port}/readyz", timeout=1)).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or media.returncode is not None:
                    raise SystemExit("media did not become ready")
                await asyncio.sleep(0.2)
        bus = await Bus.connect(nats_url, "media-bench")
        counts = {"frames": 0, "utterances": 0}
        tasks = [asyncio.create_task(_call(bus, audio, args.seconds, 0.02 * i % 1.0, counts))
                 for i in range(args.calls)]
        await asyncio.sleep(2.0)  # all calls claimed and streaming
        cpu0, f0, t0 = _cpu_seconds(media.pid), counts["frames"], time.monotonic()
        await asyncio.sleep(args.seconds - 3.0)
        cpu1, f1, t1 = _cpu_seconds(media.pid), counts["frames"], time.monotonic()
        await asyncio.gather(*tasks)
        await asyncio.sleep(1.0)
        await bus.close()
        frames = f1 - f0
        per_frame_us = (cpu1 - cpu0) / frames * 1e6
        cpu_pct = 100 * (cpu1 - cpu0) / (t1 - t0)
        model = "off" if args.no_turn_model else "on"
        print(f"turn model {model}, calls {args.calls}: {frames / (t1 - t0):.0f} frames/s, media CPU {cpu_pct:.0f}%"
              f" = {per_frame_us:.0f} us per 20 ms frame -> ~{20_000 / per_frame_us:.0f} calls per core;"
              f" utterances {counts['utterances']}")
    finally:
        media.terminate()
        await asyncio.wait_for(media.wait(), 30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--no-turn-model", action="store_true", help="measure the audio path alone")
    parser.add_argument("--nats", default=None, help="NATS URL (default: a private nats-server)")
    args = parser.parse_args()
    if args.nats:
        asyncio.run(_run(args, args.nats))
        return
    with embedded_nats() as url:
        asyncio.run(_run(args, url))


if __name__ == "__main__":
    main()
