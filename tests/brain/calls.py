"""Driving one call on a bus (in-memory or NATS) as the other stages would, and collecting what brain says."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from voice_runtime.ports import BusPort
from voice_schemas import AgentConfig, Envelope, events, make, parse, subjects


class Call:
    """Starts and answers a call on entry; ``seen`` holds every envelope published on the call's subjects."""

    def __init__(self, bus: BusPort, agent: AgentConfig, *, greet: bool = True) -> None:
        self.bus, self.agent, self.greet = bus, agent, greet
        self.call_id = subjects.new_call_id()
        self.seen: list[Envelope[Any]] = []
        self._sub: Any = None

    async def __aenter__(self) -> Call:
        async def collect(msg: Any) -> None:
            if ".audio." not in msg.subject:
                self.seen.append(parse(msg.data))

        self._sub = await self.bus.subscribe(subjects.call_wildcard(self.call_id), collect)
        await self.pub(events.CallStarted(agent_id=self.agent.id, agent_version=1, channel="test"))
        await self.pub(events.CallAnswered(greet=self.greet))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._sub.unsubscribe()

    async def pub(self, data: Any, **kw: Any) -> Envelope[Any]:
        env = make(data, tenant_id=self.agent.tenant_id, call_id=self.call_id, **kw)
        await self.bus.publish(env)
        return env

    def of(self, cls: type, turn_id: str | None = None) -> list[Any]:
        return [e for e in self.seen if isinstance(e.data, cls) and (turn_id is None or e.turn_id == turn_id)]

    async def wait(self, cls: type, turn_id: str | None = None, *, n: int = 1, final: bool = False,
                   timeout: float = 10.0) -> list[Any]:
        """At least ``n`` events of ``cls`` (of ``turn_id``), one of them ``final`` when asked."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            got = self.of(cls, turn_id)
            if len(got) >= n and (not final or any(e.data.final for e in got)):
                return got
            await asyncio.sleep(0.01)
        raise AssertionError(f"waited for {n} {cls.__name__} of {turn_id}, saw {[e.type for e in self.seen]}")


async def make_agent(bus: BusPort, **kw: Any) -> AgentConfig:
    """An agent version in the ``agents`` KV, as control-api writes it."""
    agent = AgentConfig(id="brain" + subjects.new_id()[:10], tenant_id="t-brain", version=1,
                        first_message="Hi, this is the bakery.", **kw)
    kv = (await bus.provision())["agents"]
    await kv.put(subjects.agent_version_key(agent.id, 1), agent.model_dump_json().encode())
    return agent


Start = Callable[..., Awaitable[Any]]  # start(**settings) -> a started BrainService


@contextlib.asynccontextmanager
async def brains(bus: BusPort, llm_base_url: str, **defaults: Any) -> AsyncIterator[Start]:
    """``start(**settings)`` runs a brain on ``bus`` (test timeouts unless ``defaults`` or ``settings`` say
    otherwise); every brain started is stopped on exit."""
    from voice_brain.service import BrainService
    from voice_brain.settings import BrainSettings

    started: list[BrainService] = []

    async def start(**settings: Any) -> BrainService:
        s: dict[str, Any] = dict(nats_url="nats://unused:4222", llm_base_url=llm_base_url,
                                 llm_first_token_timeout_s=3.0, llm_total_timeout_s=6.0, shutdown_grace_s=1.0)
        svc = BrainService(BrainSettings(**(s | defaults | settings)))
        await svc.start(bus)
        started.append(svc)
        return svc

    try:
        yield start
    finally:
        for svc in started:
            await svc.stop()
