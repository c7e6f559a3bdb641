"""The built-in ``send_dtmf`` and ``hold`` tools in an agent version: saved with their defaults, returned, mirrored to
KV as the data plane parses them; a spec that breaks a rule is refused with a 422 naming the field."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from nats.js.errors import KeyNotFoundError
from voice_control_api.service import ControlApiService
from voice_control_api.usecases.agent_tools import check_tools
from voice_control_api.usecases.errors import InvalidField
from voice_schemas import subjects
from voice_schemas.agent import AgentConfig, HoldTool, SendDtmfTool

from .helpers import TenantCreds, bearer, ok, populate, problem

pytestmark = pytest.mark.integration

DTMF: dict[str, Any] = {"type": "send_dtmf", "max_digits": 8}
HOLD: dict[str, Any] = {"type": "hold", "line": "Please hold while I ask the kitchen.", "max_hold_s": 90,
                        "audio": "silence"}


@pytest.fixture(scope="module")
async def t(client: httpx.AsyncClient) -> TenantCreds:
    return await populate(client, "dtmf and hold")


async def test_send_dtmf_and_hold_are_saved_returned_and_mirrored(
    client: httpx.AsyncClient, service: ControlApiService, t: TenantCreds
) -> None:
    admin = bearer(t.admin_key)
    agent = await ok(await client.post("/v1/agents", json={"name": "ivr", "tools": [DTMF, HOLD, {"type": "hold",
                                                                                           "name": "wait"}]},
                                       headers=admin), 201)
    for returned in (agent, await ok(await client.get(f"/v1/agents/{agent['id']}", headers=admin))):
        dtmf, hold, default_hold = returned["tools"]
        assert (dtmf["name"], dtmf["max_digits"]) == ("send_dtmf", 8)
        assert (hold["name"], hold["line"], hold["max_hold_s"], hold["audio"]) == (
            "hold", HOLD["line"], 90, "silence")
        assert (default_hold["name"], default_hold["line"], default_hold["max_hold_s"], default_hold["audio"]) == (
            "wait", "Please hold while I check.", 60, "tone")
    try:
        entry = await service.kv["agents"].get(subjects.agent_key(agent["id"]))
    except KeyNotFoundError:
        pytest.fail("the agent was not mirrored to KV")
    config = AgentConfig.model_validate(json.loads(entry.value or b"{}"))
    dtmf_tool, hold_tool, _ = config.tools
    assert isinstance(dtmf_tool, SendDtmfTool) and dtmf_tool.max_digits == 8
    assert isinstance(hold_tool, HoldTool) and hold_tool.max_hold_s == 90 and config.tool("wait") is not None


BAD = [
    ("too many keys", [{**DTMF, "max_digits": 33}], "body.tools.0.send_dtmf.max_digits", "less than or equal"),
    ("no keys", [{**DTMF, "max_digits": 0}], "body.tools.0.send_dtmf.max_digits", "greater than or equal"),
    ("hold too long", [{**HOLD, "max_hold_s": 601}], "body.tools.0.hold.max_hold_s", "less than or equal"),
    ("hold too short", [{**HOLD, "max_hold_s": 2}], "body.tools.0.hold.max_hold_s", "greater than or equal"),
    ("blank hold line", [{**HOLD, "line": "   "}], "body.tools.0.line", "words"),
    ("hold line with a line break", [{**HOLD, "line": "Hold on.\nSecret"}], "body.tools.0.line", "line breaks"),
    ("unknown hold audio", [{**HOLD, "audio": "jazz"}], "body.tools.0.hold.audio", "'tone' or 'silence'"),
    ("unknown field", [{**DTMF, "digits": "1234"}], "body.tools.0.send_dtmf.digits", "Extra inputs"),
    ("a built-in's name on another tool",
     [{"type": "http", "name": "send_dtmf", "url": "https://api.example.com/x"}], "body.tools.0.name", "built-in"),
    ("hold's name on send_dtmf", [{**DTMF, "name": "Hold"}], "body.tools.0.name", "built-in"),
    ("two tools of one name", [DTMF, {**HOLD, "name": "SEND_DTMF"}], "body.tools.1.name", "has this name"),
]


@pytest.mark.parametrize(("tools", "field", "words"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
async def test_a_bad_dtmf_or_hold_spec_is_refused_with_its_field(
    client: httpx.AsyncClient, t: TenantCreds, tools: list[dict[str, Any]], field: str, words: str
) -> None:
    body = problem(await client.post("/v1/agents", json={"name": "bad", "tools": tools},
                                     headers=bearer(t.admin_key)), 422)
    error = body["errors"][0]
    assert error["field"] == field and words in error["message"], body


@pytest.mark.unit
def test_the_pure_checks_name_the_field() -> None:
    check_tools([SendDtmfTool(), HoldTool()])
    with pytest.raises(InvalidField) as e:
        check_tools([HoldTool(line="\t \x0b")])
    assert e.value.field == "tools.0.line"
