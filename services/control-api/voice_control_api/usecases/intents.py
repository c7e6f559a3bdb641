"""Agents' intents: the checks a version's intents pass before it is saved, and their counts.

Checks (each refusal an ``InvalidField`` naming ``intents.<i>.<field>``, answered as a 422 problem):
- names unique per agent, ignoring case; examples unique within an intent; at most ``MAX_EXAMPLES`` examples over
  all intents (each is embedded once per agent version in every brain replica);
- no text PostgreSQL cannot hold (NUL) or that is not Unicode (lone surrogates);
- ``tool`` names a tool of the same version that can run without arguments: ``end_call``, or an HTTP tool whose
  ``parameters`` accept ``{}`` (a tool that needs arguments is the model's to call; a transfer needs a destination).

Counts: the caller turns of the agent's calls that brain matched to an intent (``turn.completed`` → analytics →
``call_turns.intent``), per intent, with how many were answered from the cache; the agent's configured intents that
no call matched yet count 0.
"""

from __future__ import annotations

from datetime import datetime

from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from voice_schemas.agent import AgentConfig, EndCallTool, HttpTool

from ..context import AppContext
from ..models_intents import IntentCount, IntentStats
from ..principal import Principal
from ..store import agents as agent_store
from ..store import intents as store
from .common import connection, found
from .errors import InvalidField

MAX_EXAMPLES = 500


def _text_ok(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _accepts_no_arguments(tool: HttpTool) -> bool:
    try:
        validator = validator_for(tool.parameters)(tool.parameters)
        return not any(True for _ in validator.iter_errors({}))
    except (SchemaError, TypeError):
        return False  # agent_tools refuses the schema itself


def check(config: AgentConfig) -> None:
    """``InvalidField`` for the first intent a version may not hold (see the module docstring)."""
    seen: set[str] = set()
    total = 0
    for i, intent in enumerate(config.intents):
        where = f"intents.{i}"
        key = intent.name.lower()
        if key in seen:
            raise InvalidField(f"{where}.name", f"another intent is already named {intent.name!r}")
        seen.add(key)
        texts = [("name", intent.name), ("answer", intent.answer or "")]
        texts += [(f"examples.{j}", e) for j, e in enumerate(intent.examples)]
        for field, text in texts:
            if not _text_ok(text):
                raise InvalidField(f"{where}.{field}", "holds a character that cannot be stored (NUL or a lone "
                                   "surrogate)")
        lowered = [" ".join(e.lower().split()) for e in intent.examples]
        for j, e in enumerate(lowered):
            if not e:
                raise InvalidField(f"{where}.examples.{j}", "an example needs words")
            if e in lowered[:j]:
                raise InvalidField(f"{where}.examples.{j}", "the same example twice")
        total += len(intent.examples)
        if total > MAX_EXAMPLES:
            raise InvalidField(f"{where}.examples", f"at most {MAX_EXAMPLES} examples over all intents")
        if intent.tool is None:
            continue
        tool = config.tool(intent.tool)
        if tool is None:
            raise InvalidField(f"{where}.tool", f"the agent has no tool named {intent.tool!r}")
        if isinstance(tool, EndCallTool):
            continue
        if not isinstance(tool, HttpTool) or not _accepts_no_arguments(tool):
            raise InvalidField(f"{where}.tool", "an intent runs its tool without arguments: use end_call or an "
                               "HTTP tool whose parameters require none")


async def stats(ctx: AppContext, principal: Principal, agent_id: str, started_after: datetime | None,
                started_before: datetime | None) -> IntentStats:
    async with connection(ctx) as conn:
        agent = found(await agent_store.get(conn, principal.tenant_id, agent_id, owner=principal.owner_filter),
                      "agent")
        rows = await store.counts(conn, principal.tenant_id, agent_id, started_after, started_before)
    configured = [i.name for i in agent.intents]
    counted = {r["intent"] for r in rows}
    out = [IntentCount(name=r["intent"], turns=r["turns"], cached=r["cached"], avg_confidence=r["avg_confidence"],
                       configured=r["intent"] in configured) for r in rows]
    out += [IntentCount(name=n, turns=0, cached=0, avg_confidence=None, configured=True)
            for n in configured if n not in counted]
    return IntentStats(agent_id=agent_id, started_after=started_after, started_before=started_before, intents=out)
