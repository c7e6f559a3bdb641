"""brain's view of ``voice_runtime.llm_endpoints`` (the one rule of which endpoint, key and guard an agent's
completions use): the same resolver, answering with the chat role's ``Endpoint``.

The platform's model may be served by several servers (``LLM_BASE_URL`` and ``LLM_BASE_URL_REPLICAS``): an embedded
llama.cpp server answers one request at a time, so a second call's turn waited for the first call's whole reply
(`make bench`'s concurrency knee was one call). Each call keeps the server it was first given (that server's prompt
cache holds its conversation, and a reply begun early is matched by its server); a new call takes the server with
the fewest calls active lately. The map is bounded (``MAX_CALLS``, oldest forgotten first): a forgotten call is
simply placed again.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from voice_runtime import llm_endpoints
from voice_runtime.egress import EgressPolicy
from voice_runtime.llm_endpoints import EndpointRefused, LlmEndpoint, refusal_reason
from voice_runtime.secretbox import SecretBox
from voice_schemas.agent import LlmSettings

from .chat import Endpoint

__all__ = ["AgentEndpoints", "EndpointRefused", "refusal_reason"]

MAX_CALLS = 4096  # calls whose platform server is remembered
ACTIVE_S = 120.0  # a call asked for its server this recently counts as active on it


@dataclass(frozen=True)
class AgentEndpoints:
    platform: Endpoint  # LLM_BASE_URL with LLM_API_KEY, unguarded
    egress: EgressPolicy  # the guard of every agent's own endpoint
    box: SecretBox | None  # None: SECRETS_KEY unset, tenant secrets are refused
    secrets: Any  # the ``secrets`` KV bucket (``nats.js.kv.KeyValue`` or ``MemoryKV``)
    replicas: tuple[str, ...] = ()  # more servers of the platform's model (same key)
    _resolver: llm_endpoints.AgentEndpoints = field(init=False, repr=False, compare=False)
    _servers: tuple[Endpoint, ...] = field(init=False, repr=False, compare=False)
    _placed: OrderedDict[str, tuple[int, float]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        platform = LlmEndpoint(self.platform.base_url, self.platform.api_key, self.platform.egress)
        object.__setattr__(self, "_resolver",
                           llm_endpoints.AgentEndpoints(platform, self.egress, self.box, self.secrets))
        others = tuple(Endpoint(u, self.platform.api_key, egress=self.platform.egress) for u in self.replicas
                       if u != self.platform.base_url)
        object.__setattr__(self, "_servers", (self.platform, *others))
        object.__setattr__(self, "_placed", OrderedDict())

    def platform_for(self, call_id: str | None, now: float | None = None) -> Endpoint:
        """The platform server of ``call_id``: the one it was first given; a new call gets the server with the
        fewest calls active in the last ``ACTIVE_S`` (the first such one)."""
        servers = self._servers
        if len(servers) == 1 or not call_id:
            return servers[0]
        now = time.monotonic() if now is None else now
        placed = self._placed
        seen = placed.get(call_id)
        if seen is None:
            load = [0] * len(servers)
            for i, at in placed.values():
                if now - at <= ACTIVE_S:
                    load[i] += 1
            index = load.index(min(load))
            while len(placed) >= MAX_CALLS:
                placed.popitem(last=False)
        else:
            index = seen[0]
            placed.move_to_end(call_id)
        placed[call_id] = (index, now)
        return servers[index]

    async def for_agent(self, tenant_id: str, llm: LlmSettings, call_id: str | None = None) -> Endpoint:
        if not llm.base_url:
            return self.platform_for(call_id)
        e = await self._resolver.for_agent(tenant_id, llm)
        return Endpoint(e.base_url, e.api_key, egress=e.egress)

    async def tenant_key(self, tenant_id: str, name: str) -> str:
        return await self._resolver.tenant_key(tenant_id, name)
