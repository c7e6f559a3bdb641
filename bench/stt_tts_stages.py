"""Stage latency bench for stt and tts on this machine (not a test).

    .venv/bin/python -m bench.stt_tts_stages [--runs 10]

- stt: inference time of a ~3 s utterance (piper speech) at beam 1 and beam 5, clean 16 kHz and through an
  8 kHz mu-law phone line, with the service's decoding options and threads.
- tts: time to the first 20 ms frame of a 10-word sentence, at the engine (synthesis + resampling +
  framing) and through the running service (ReplyChunk published -> first frame on audio.out).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

from nats.aio.msg import Msg
from voice_devstack.speech import phone_line_pcm16, speech_pcm16, word_error_rate
from voice_devstack.stack import embedded_nats
from voice_runtime.bus import Bus
from voice_schemas import make, subjects
from voice_schemas.audio import AudioFrame
from voice_schemas.events import ReplyChunk
from voice_stt.engines.whisper import DecodeOptions, WhisperSettings, WhisperSpeechToText
from voice_tts.calls import CallAudio
from voice_tts.engines.piper import PiperTextToSpeech
from voice_tts.service import TtsService
from voice_tts.settings import TtsSettings
from voice_tts.speaker import ChunkJob, speak_chunk

from .stats import reported_percentile, too_small

UTTERANCE = "I would like to book a table for two people tomorrow evening."
SENTENCE = "Sure, I can book a table for two people tonight."  # 10 words


def fmt(xs: list[float]) -> str:
    p90 = reported_percentile(xs, 90)
    p90_txt = f"{p90 * 1000:6.0f} ms" if p90 is not None else (too_small(len(xs), 90) or "-")
    return f"p50 {statistics.median(xs) * 1000:6.0f} ms  p90 {p90_txt}  (n={len(xs)})"


def cpu_s() -> float:
    """CPU seconds used by this process so far (all threads): the cost, whatever else runs on the box."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def bench_stt(runs: int, model: str) -> None:
    threads = os.cpu_count() or 1
    clean, phone = speech_pcm16(UTTERANCE), phone_line_pcm16(UTTERANCE)
    print(f"stt {model}: utterance {len(clean) / 32000:.2f} s, {threads} threads")
    stt = WhisperSpeechToText(WhisperSettings(stt_model=model, stt_cpu_threads=threads), timeout_s=120.0)
    await stt.start()  # loads and warms up
    cases = [(beam, name, pcm, rate) for beam in (1, 5)
             for name, pcm, rate in (("16 kHz", clean, 16_000), ("8 kHz mu-law", phone, 8_000))]
    wall: dict[int, list[float]] = {i: [] for i in range(len(cases))}
    cpu: dict[int, list[float]] = {i: [] for i in range(len(cases))}
    texts: dict[int, str] = {}
    for _ in range(runs):  # interleaved, so every case sees the same background load
        for i, (beam, _name, pcm, rate) in enumerate(cases):
            stt.decode = DecodeOptions(beam_size=beam)
            c0, t0 = cpu_s(), time.perf_counter()
            texts[i] = (await stt.transcribe(pcm, rate, "en")).text
            wall[i].append(time.perf_counter() - t0)
            cpu[i].append(cpu_s() - c0)
    stt.close()
    for i, (beam, name, _pcm, _rate) in enumerate(cases):
        print(f"  beam {beam} {name:13s} wall {fmt(wall[i])}  cpu p50 {statistics.median(cpu[i]) * 1000:5.0f} ms"
              f"  WER {word_error_rate(UTTERANCE, texts[i]):.2f}  {texts[i]!r}")


async def bench_tts(runs: int) -> None:
    piper = PiperTextToSpeech()
    tts = piper.voices.get(None)  # the service's default voice, loaded as the service loads it
    for _ in tts.synthesize("Warm up."):
        pass

    async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def drop(frame: AudioFrame) -> None:
        return None

    for split in (False, True):
        engine, synth_cpu = [], []
        for _ in range(runs):
            c0 = cpu_s()
            job = ChunkJob("t", 0, 0, SENTENCE, True, split_first_clause=split)
            r = await speak_chunk(job, tts, CallAudio(), drop, in_thread)
            assert r.first_audio_s is not None
            engine.append(r.first_audio_s)
            synth_cpu.append(cpu_s() - c0)
        how = "first clause split" if split else "whole sentence"
        print(f"tts engine first frame, {how:18s} ({r.audio_s:.1f} s of audio): {fmt(engine)}"
              f"  cpu per chunk p50 {statistics.median(synth_cpu) * 1000:.0f} ms")
    piper.close()

    with embedded_nats() as url:
        svc = TtsService(TtsSettings(nats_url=url, shutdown_grace_s=2.0))
        await svc.start()
        bus = await Bus.connect(url, "bench")
        try:
            bus_times = []
            for _ in range(runs):
                call_id = subjects.new_call_id()
                first: asyncio.Future[float] = asyncio.get_running_loop().create_future()

                async def on_frame(msg: Msg, first: asyncio.Future[float] = first) -> None:
                    if not first.done():
                        first.set_result(time.perf_counter())

                sub = await bus.nc.subscribe(subjects.audio_out(call_id), cb=on_frame)
                env = make(ReplyChunk(index=0, text=SENTENCE, final=True), tenant_id="bench", call_id=call_id)
                t0 = time.perf_counter()
                await bus.publish(env)
                bus_times.append(await asyncio.wait_for(first, 30) - t0)
                await sub.unsubscribe()
                await asyncio.sleep(0.3)
            print(f"tts service first frame (ReplyChunk 0 published -> first frame received): {fmt(bus_times)}")
        finally:
            await bus.close()
            await svc.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--skip-stt", action="store_true")
    ap.add_argument("--skip-tts", action="store_true")
    a = ap.parse_args()
    print(f"load average before: {os.getloadavg()}")
    if not a.skip_stt:
        asyncio.run(bench_stt(a.runs, a.model))
    if not a.skip_tts:
        asyncio.run(bench_tts(a.runs))
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
