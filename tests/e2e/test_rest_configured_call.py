"""A call to an agent configured only through control-api's REST API: the tenant, the agent (its greeting) and
the phone number are created over HTTP; nothing is written to KV by the test. The caller hears that greeting, so
control-api → KV → ingress (number route) → brain (agent version) → tts is exercised end to end."""

from __future__ import annotations

import asyncpg
import pytest

from .conftest import Platform, words
from .rest_call import FIRST_MESSAGE, RestCall

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_caller_hears_the_greeting_set_through_the_api(rest_call: RestCall) -> None:
    heard = words(rest_call.greeting_heard)
    expected = words(FIRST_MESSAGE)
    assert len(heard & expected) >= len(expected) // 2, rest_call.greeting_heard
    # the words only this agent's greeting has (every other e2e agent greets for a bakery or a garage)
    assert heard & {"lighthouse", "museum", "lantern"}, rest_call.greeting_heard
    # the call ran on what control-api wrote: its tenant, its agent (version 1), the number it routed
    greeting = next(t for t in rest_call.turns if t["turn_id"] == "greeting")
    assert greeting["speaker"] == "agent" and greeting["text"] == FIRST_MESSAGE
    assert greeting["tenant_id"] == rest_call.tenant_id


async def test_the_call_record_names_the_api_agent_and_number(rest_call: RestCall, platform: Platform) -> None:
    conn = await asyncpg.connect(platform.database_url)
    try:
        row = await conn.fetchrow("SELECT * FROM calls WHERE id = $1", rest_call.call_id)
    finally:
        await conn.close()
    assert row is not None
    assert (row["tenant_id"], row["agent_id"], row["agent_version"]) == (
        rest_call.tenant_id,
        rest_call.agent["id"],
        rest_call.agent["version"],
    )
    assert row["to_number"] == rest_call.number and row["channel"] == "twilio"
