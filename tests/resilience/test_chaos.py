"""The small chaos run (`make bench-chaos` is the volume one): a few phone calls through the whole data plane with
two replicas of every stage, while each stage loses a replica to `kill -9` once (and gets it back). Every call
completes, no turn is answered twice, no question is lost or stored twice, and no call has more unanswered turns
than kills during it. The model is the OpenAI-protocol double (fast and deterministic); everything else is real:
NATS, PostgreSQL, Silero, smart-turn, Moonshine, piper, the Twilio-protocol callers."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from voice_runtime.bus import Bus
from voice_runtime.paths import state_dir

from bench.calls import Target, Timeouts
from bench.chaos import Killer, chaos
from bench.speech import QUESTIONS, Voice

from ..brain.fake_openai import FakeOpenAI, Script
from ..e2e.conftest import configure_agent
from .procs import start_service, stop_all

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

# how long a replica may take to come back before the test calls it lost: generous, since this is a liveness check
# (does it come back at all), not a timing one; a restart on two busy cores has taken 35-45 s on CI
READY_S = 240.0

NUMBER = "+15550177"
STAGES = {"media": "voice_media", "stt": "voice_stt", "brain": "voice_brain", "tts": "voice_tts"}


@dataclass
class Plane:
    ingress: str
    ports: dict[str, list[int]]
    env: dict[str, str]
    logs: Path
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)  # port -> process

    def start(self, stage: str, port: int | None = None) -> int:
        proc, url = start_service(STAGES[stage], self.logs, f"{stage}-{port or 'new'}", timeout=READY_S, port=port,
                                  **self.env)
        p = int(url.rsplit(":", 1)[1])
        self.procs[p] = proc
        return p

    async def restart(self, stage: str, port: int) -> None:
        old = self.procs.pop(port, None)
        if old is not None:
            await asyncio.to_thread(old.wait, 10)
        await asyncio.to_thread(self.start, stage, port)


@pytest.fixture
def llm() -> Iterator[FakeOpenAI]:
    f = FakeOpenAI()
    f.start()
    f.reset(Script(text="Sure, we can do that. Anything else?"))
    yield f
    f.stop()


@pytest.fixture
def plane(private_nats_url: str, database_url: str, llm: FakeOpenAI, tmp_path: Path) -> Iterator[Plane]:
    env = dict(NATS_URL=private_nats_url, DATABASE_URL=database_url, LLM_BASE_URL=llm.base_url,
               TWILIO_ALLOW_UNSIGNED="true", MOONSHINE_MODELS_DIR=str(state_dir() / "models"))
    others: list[subprocess.Popen[bytes]] = []
    plane = Plane("", {}, env, tmp_path)
    try:
        # all ten processes start at once, four at a time: a start is mostly imports and model loads, so one at a
        # time left a core idle (58 s of set-up on two cores, sequentially)
        with ThreadPoolExecutor(max_workers=4) as pool:
            side = [pool.submit(start_service, m, tmp_path, m.removeprefix("voice_"), **env)
                    for m in ("voice_analytics", "voice_ingress")]
            replicas = {stage: [pool.submit(plane.start, stage) for _ in range(2)] for stage in STAGES}
            wait([*side, *(f for fs in replicas.values() for f in fs)])
        others += [f.result()[0] for f in side if f.exception() is None]  # stopped below even if another failed
        plane.ingress = side[1].result()[1]
        for stage, futures in replicas.items():
            plane.ports[stage] = [f.result() for f in futures]
        yield plane
    finally:
        stop_all([*others, *plane.procs.values()])


@pytest.fixture
def bus(private_bus: Bus) -> Bus:
    return private_bus


async def test_calls_survive_one_kill_of_each_stage(plane: Plane, bus: Bus, database_url: str) -> None:
    await configure_agent(bus, NUMBER, first_message="Hello, this is the bakery.")
    voice = Voice()
    questions = [voice.utter(q) for q in QUESTIONS[:4]]
    killer = Killer(plane.ports, every_s=5.0, restart=plane.restart, order=["brain", "tts", "stt", "media"],
                    ready_timeout_s=READY_S)
    report = await chaos(Target("platform", plane.ingress, to=NUMBER), killer, questions, calls=6, concurrency=2,
                         turns=2, t=Timeouts(greeting_s=40, reply_s=40), database_url=database_url)
    f = report.figures()
    print(f)  # the figures of this run, for the note (not asserted on timing)
    assert f["kills"] == 4 and sorted(k.stage for k in report.kills) == sorted(STAGES)
    lost = [k for k in report.kills if k.ready_after_s is None]
    logs = {k: plane.logs / f"{k.stage}-{k.port}.log" for k in lost}
    assert not lost, (report.kills, {  # every replica came back; else what its log said
        p.name: p.read_text()[-2000:] if p.exists() else "(never restarted)" for p in logs.values()})
    for i, c in enumerate(report.calls):
        unanswered = sum(1 for t in c.turns if t.error is not None)
        assert c.error is None, (i, c.error)  # greeted, every question asked, the call never dropped
        assert len(c.turns) == 2
        assert unanswered <= max(1, report.kills_during(i)), (i, [t.error for t in c.turns])
    assert f["duplicate_turns"] == 0
    assert f["transcripts_doubled"] == 0
    assert f["transcripts_lost"] <= f["turns_affected"]  # a question lost is a turn affected, never a silent one
