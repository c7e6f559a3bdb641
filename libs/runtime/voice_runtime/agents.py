"""Agent configuration lookup for the data plane: JetStream KV written by control-api.

Reads are cached per (agent, version) since versions are immutable. Until control-api has
configured anything, the default agent from settings answers for the default tenant so a call
path can be exercised on a fresh install.
"""

from __future__ import annotations

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from voice_schemas import AgentConfig, NumberRoute, subjects

from .settings import CommonSettings


def default_agent(settings: CommonSettings) -> AgentConfig:
    return AgentConfig(id=settings.default_agent_id, tenant_id=settings.default_tenant_id, version=1)


class AgentDirectory:
    def __init__(self, agents: KeyValue, numbers: KeyValue, settings: CommonSettings) -> None:
        self.agents, self.numbers, self.settings = agents, numbers, settings
        self._versions: dict[tuple[str, int], AgentConfig] = {}

    async def current(self, agent_id: str) -> AgentConfig | None:
        try:
            entry = await self.agents.get(subjects.agent_key(agent_id))
        except KeyNotFoundError:
            return default_agent(self.settings) if agent_id == self.settings.default_agent_id else None
        if entry.value is None:
            return None
        return AgentConfig.model_validate_json(entry.value)

    async def version(self, agent_id: str, version: int) -> AgentConfig | None:
        key = (agent_id, version)
        if key in self._versions:
            return self._versions[key]
        try:
            entry = await self.agents.get(subjects.agent_version_key(agent_id, version))
        except KeyNotFoundError:
            if agent_id == self.settings.default_agent_id:
                return default_agent(self.settings)
            return None
        if entry.value is None:
            return None
        cfg = AgentConfig.model_validate_json(entry.value)
        self._versions[key] = cfg
        return cfg

    async def route(self, number: str) -> NumberRoute | None:
        """The agent a called number reaches; the default agent when no number is configured at all."""
        try:
            entry = await self.numbers.get(subjects.number_key(number))
            if entry.value:
                return NumberRoute.model_validate_json(entry.value)
        except (KeyNotFoundError, subjects.InvalidSubjectToken):
            pass
        if await self._no_numbers_configured():
            return NumberRoute(number=number, tenant_id=self.settings.default_tenant_id,
                               agent_id=self.settings.default_agent_id)
        return None

    async def _no_numbers_configured(self) -> bool:
        # the bucket's message count (stream info): no consumer is created, as kv.keys() would per call.
        # Delete markers count too, so default routing is for a fresh install where no number ever was.
        try:
            status = await self.numbers.status()
        except Exception:  # unreachable: do not route everything to the default agent
            return False
        return not status.values
