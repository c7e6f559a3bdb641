"""The console's call page shows, under an agent's turn, the documents its reply was given (each name once)."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from voice_control_api.console.web import TEMPLATES
from voice_control_api.models import CallDetail, Turn
from voice_control_api.models_knowledge import TurnSource

pytestmark = pytest.mark.unit


def turn(speaker: str, sources: list[TurnSource]) -> Turn:
    return Turn(turn_id="t1", speaker=speaker, text="Free after six.", started_at=None, ended_at=None,  # type: ignore[arg-type]
                interrupted=False, latency_ms=None, latency=None, sources=sources)


def source(chunk: str, name: str) -> TurnSource:
    return TurnSource(chunk_id=chunk, knowledge_base_id="kb", document_id="d" + name, document_name=name, score=0.5)


def render(turns: list[Turn]) -> str:
    call = CallDetail(id="c1", tenant_id="t", agent_id="a", agent_version=1, channel="twilio", from_number=None,
                      to_number=None, status="ended", started_at=datetime.now(UTC), answered_at=None, ended_at=None,
                      end_reason=None, duration_s=None, turns=turns)
    viewer = SimpleNamespace(csrf="x", who="admin", tenant_name="T", principal=SimpleNamespace(role="admin"),
                             platform_admin=False, is_admin=True)
    return TEMPLATES.env.get_template("calls/detail.html").render(
        call=call, agent_name="host", turns=[(t, []) for t in turns], interruptions=0, live=False, viewer=viewer,
        notice=None, errors=[], path="/calls/c1")


def test_the_sources_line_names_each_document_once_escaped() -> None:
    html = render([turn("caller", []),
                   turn("agent", [source("1", "menu.pdf"), source("2", "menu.pdf"), source("3", "<b>hours</b>.md")])])
    assert html.count('data-testid="sources"') == 1
    line = html.split('data-testid="sources">')[1].split("</div>")[0]
    assert line == "Sources: menu.pdf, &lt;b&gt;hours&lt;/b&gt;.md"


def test_no_sources_no_line() -> None:
    assert 'data-testid="sources"' not in render([turn("agent", [])])
