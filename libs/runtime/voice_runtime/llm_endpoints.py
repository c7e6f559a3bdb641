"""Which OpenAI-compatible endpoint an agent's completions go to, with which key, through which guard: one rule for
every service that calls an agent's model (brain for the conversation, analytics for the post-call summary).

- The agent names no ``llm.base_url``: the platform's endpoint (``LLM_BASE_URL``) with the platform's key
  (``LLM_API_KEY``). It is operator-configured, so it is not guarded.
- The agent names its own ``llm.base_url``: the platform key never goes there. The key is the tenant secret the
  agent names (``llm.api_key_secret``), read from the KV bucket ``secrets`` under the call's tenant and opened
  with ``SECRETS_KEY`` (the box binds tenant and name, so another tenant's value never opens); no secret named,
  no key. Every connection goes through the egress guard (``EGRESS_ALLOW``).

A key that cannot be had (no ``SECRETS_KEY``, no such secret, one that does not open, the KV unreachable) is
``EndpointRefused``. Reasons name the secret, never its value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nats.js.errors import KeyNotFoundError
from voice_schemas import subjects
from voice_schemas.agent import LlmSettings

from .egress import BlockedAddress, EgressPolicy
from .secretbox import SecretBox, SecretError


class EndpointRefused(Exception):
    """The agent's endpoint cannot be called; the message says why (no secret values)."""


@dataclass(frozen=True, slots=True)
class LlmEndpoint:
    """Where a model is served, the key that endpoint is called with ("": none), and the egress guard every
    connection to it must go through (None only for the operator's own endpoint)."""

    base_url: str
    api_key: str = field(default="", repr=False)
    egress: EgressPolicy | None = None


@dataclass(frozen=True)
class AgentEndpoints:
    platform: LlmEndpoint  # LLM_BASE_URL with LLM_API_KEY, unguarded
    egress: EgressPolicy  # the guard of every agent's own endpoint
    box: SecretBox | None  # None: SECRETS_KEY unset, tenant secrets are refused
    secrets: Any  # the ``secrets`` KV bucket (``nats.js.kv.KeyValue`` or ``MemoryKV``)

    async def for_agent(self, tenant_id: str, llm: LlmSettings) -> LlmEndpoint:
        if not llm.base_url:
            return self.platform
        key = await self.tenant_key(tenant_id, llm.api_key_secret) if llm.api_key_secret else ""
        return LlmEndpoint(llm.base_url, key, egress=self.egress)

    async def tenant_key(self, tenant_id: str, name: str) -> str:
        """The tenant secret ``name``, opened; ``EndpointRefused`` when it cannot be had."""
        if self.box is None:
            raise EndpointRefused(f"the agent's key is the tenant secret {name!r}, but SECRETS_KEY is not set")
        try:
            entry = await self.secrets.get(subjects.secret_key(tenant_id, name))
        except KeyNotFoundError:
            entry = None
        except Exception as e:
            raise EndpointRefused(f"the tenant secret {name!r} could not be read: {type(e).__name__}") from e
        if entry is None or not entry.value:
            raise EndpointRefused(f"the tenant secret {name!r} does not exist for tenant {tenant_id}")
        try:
            return self.box.open(tenant_id, name, entry.value)
        except SecretError as e:
            raise EndpointRefused(f"the tenant secret {name!r} does not open for tenant {tenant_id} "
                                  "(sealed for another tenant or name, or with another SECRETS_KEY)") from e


def refusal_reason(error: BaseException) -> str:
    """Why a completion failed, for the log: the refusal or blocked address in the error's chain when there is one
    (the SDK wraps the guard's refusal in its own connection error), otherwise the error itself."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        if isinstance(e, EndpointRefused | BlockedAddress):
            return str(e)
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return repr(error)[:300]
