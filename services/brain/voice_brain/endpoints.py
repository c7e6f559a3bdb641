"""brain's view of ``voice_runtime.llm_endpoints`` (the one rule of which endpoint, key and guard an agent's
completions use): the same resolver, answering with the chat role's ``Endpoint``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from voice_runtime import llm_endpoints
from voice_runtime.egress import EgressPolicy
from voice_runtime.llm_endpoints import EndpointRefused, LlmEndpoint, refusal_reason
from voice_runtime.secretbox import SecretBox
from voice_schemas.agent import LlmSettings

from .chat import Endpoint

__all__ = ["AgentEndpoints", "EndpointRefused", "refusal_reason"]


@dataclass(frozen=True)
class AgentEndpoints:
    platform: Endpoint  # LLM_BASE_URL with LLM_API_KEY, unguarded
    egress: EgressPolicy  # the guard of every agent's own endpoint
    box: SecretBox | None  # None: SECRETS_KEY unset, tenant secrets are refused
    secrets: Any  # the ``secrets`` KV bucket (``nats.js.kv.KeyValue`` or ``MemoryKV``)
    _resolver: llm_endpoints.AgentEndpoints = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        platform = LlmEndpoint(self.platform.base_url, self.platform.api_key, self.platform.egress)
        object.__setattr__(self, "_resolver",
                           llm_endpoints.AgentEndpoints(platform, self.egress, self.box, self.secrets))

    async def for_agent(self, tenant_id: str, llm: LlmSettings) -> Endpoint:
        if not llm.base_url:
            return self.platform
        e = await self._resolver.for_agent(tenant_id, llm)
        return Endpoint(e.base_url, e.api_key, egress=e.egress)

    async def tenant_key(self, tenant_id: str, name: str) -> str:
        return await self._resolver.tenant_key(tenant_id, name)
