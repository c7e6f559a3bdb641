"""A number to call: the platform's own routing, or a bench agent the bench configures for the run.

On a fresh install the default agent answers every number, and the bench writes nothing. Once any
number has been configured (the platform then routes only configured numbers), the bench, unless told
not to (``--configure-agent no``), writes what control-api would write to JetStream KV: an agent with
the platform's default agent settings (so figures stay comparable with the default agent and with the
Pipecat peer, which uses the same settings) and a route for the called number. It keeps them in place
while it runs (control-api's periodic resync removes KV keys it does not know) and deletes them after.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import nats
from nats.aio.client import Client as NATS
from voice_schemas import AgentConfig, NumberRoute, subjects

BENCH_AGENT_ID = "bench-agent"


class BenchAgent:
    def __init__(self, nats_url: str, number: str, tenant_id: str = "default", keep_every_s: float = 5.0) -> None:
        self.nats_url, self.number, self.keep_every_s = nats_url, number, keep_every_s
        self.agent = AgentConfig(id=BENCH_AGENT_ID, tenant_id=tenant_id, version=1, name="bench")
        self.route = NumberRoute(number=number, tenant_id=tenant_id, agent_id=BENCH_AGENT_ID)
        self.nc: NATS | None = None
        self._task: asyncio.Task[None] | None = None
        self.rewrites = 0  # times the keys had vanished and were written again

    def _items(self) -> list[tuple[str, str, bytes]]:
        raw = self.agent.model_dump_json().encode()
        return [("agents", subjects.agent_version_key(self.agent.id, self.agent.version), raw),
                ("agents", subjects.agent_key(self.agent.id), raw),
                ("numbers", subjects.number_key(self.number), self.route.model_dump_json().encode())]

    async def _kv(self, bucket: str) -> Any:
        assert self.nc is not None
        return await self.nc.jetstream(timeout=5).key_value(bucket)

    async def _ensure(self) -> int:
        written = 0
        for bucket, key, value in self._items():
            kv = await self._kv(bucket)
            try:
                entry = await kv.get(key)
                if entry.value == value:
                    continue
            except Exception:  # missing or deleted
                pass
            await kv.put(key, value)
            written += 1
        return written

    async def install(self) -> None:
        self.nc = await nats.connect(self.nats_url, name="bench-agent", connect_timeout=5)
        await self._ensure()
        self._task = asyncio.get_running_loop().create_task(self._keep())

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self.keep_every_s)
            with contextlib.suppress(Exception):
                if await self._ensure():
                    self.rewrites += 1

    async def remove(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.nc is None:
            return
        for bucket, key, _ in reversed(self._items()):
            with contextlib.suppress(Exception):
                await (await self._kv(bucket)).delete(key)
        with contextlib.suppress(Exception):
            await self.nc.close()

    def describe(self) -> str:
        return (f"no agent answered {self.number}, so the bench configured one in KV for the run (agent "
                f"'{BENCH_AGENT_ID}' with the default agent's settings, tenant '{self.agent.tenant_id}'), kept it "
                f"in place ({self.rewrites} rewrites after a control-api resync removed it) and deleted it after")
