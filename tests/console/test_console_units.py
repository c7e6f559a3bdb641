"""The console's pure pieces: latency bars, form parsing, where sign-in may send the viewer, CSRF tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
from voice_control_api.console.agents import agent_fields
from voice_control_api.console.calls import latency_bars
from voice_control_api.console.web import safe_next
from voice_control_api.models import AgentCreate
from voice_control_api.security import csrf_matches, csrf_token, generate_session_token
from voice_devstack.stack import console_note, first_admin_env

pytestmark = pytest.mark.unit


def test_latency_bars_lay_the_stages_on_one_axis() -> None:
    bars = latency_bars(
        {
            "end_of_turn_ms": 200.0,
            "stt_ms": 100.0,
            "llm_first_token_ms": 100.0,
            "llm_first_sentence_ms": 300.0,
            "tts_first_audio_ms": 200.0,
            "bus_and_playout_ms": 100.0,
            "voice_to_voice_ms": 1000.0,
        }
    )
    by = {b.stage: b for b in bars}
    assert [b.stage for b in bars] == [
        "end_of_turn_ms",
        "stt_ms",
        "llm_first_token_ms",
        "llm_first_sentence_ms",
        "tts_first_audio_ms",
        "bus_and_playout_ms",
        "voice_to_voice_ms",
    ]
    assert (by["end_of_turn_ms"].start_pct, by["end_of_turn_ms"].width_pct) == (0.0, 20.0)
    assert (by["stt_ms"].start_pct, by["stt_ms"].width_pct) == (20.0, 10.0)
    # the first token is part of the wait for the first sentence: both start where speech-to-text ended
    assert by["llm_first_token_ms"].start_pct == by["llm_first_sentence_ms"].start_pct == 30.0
    assert by["tts_first_audio_ms"].start_pct == 60.0
    assert by["bus_and_playout_ms"].start_pct == 80.0
    assert by["voice_to_voice_ms"].total and by["voice_to_voice_ms"].width_pct == 100.0


def test_latency_bars_scale_to_the_longest_and_keep_unknown_stages_as_numbers() -> None:
    bars = latency_bars({"stt_ms": 300.0, "voice_to_voice_ms": 150.0, "vad_ms": 12.0})
    by = {b.stage: b for b in bars}
    assert by["stt_ms"].width_pct == 100.0 and by["voice_to_voice_ms"].width_pct == 50.0
    assert by["vad_ms"].width_pct == 0.0 and by["vad_ms"].ms == 12.0
    assert latency_bars(None) == [] and latency_bars({}) == []


def test_agent_form_becomes_the_api_body() -> None:
    form = {
        "name": "Front desk",
        "system_prompt": "Be brief.",
        "language": "en",
        "first_message": "  ",
        "voice": "",
        "llm.model": "",
        "llm.temperature": "0.3",
        "llm.max_tokens": "",
        "stt.language": "de",
        "turn.end_of_turn_ms": "700",
        "is_active": "on",
        "owner_user_id": "u1",
    }
    fields = agent_fields(form, owner_field=False)
    assert fields["first_message"] is None and fields["voice"] is None
    assert fields["llm"] == {"model": None, "base_url": None, "api_key_secret": None, "temperature": "0.3"}
    assert fields["turn"] == {"end_of_turn_ms": "700", "interruptible": False}
    assert fields["is_active"] is True and "owner_user_id" not in fields  # only admins hand agents over
    agent = AgentCreate.model_validate(fields)
    assert agent.llm.temperature == 0.3 and agent.llm.max_tokens == 160 and agent.turn.end_of_turn_ms == 700
    assert agent_fields(form, owner_field=True)["owner_user_id"] == "u1"


@pytest.mark.parametrize(
    ("wanted", "goes_to"),
    [
        ("/calls?status=ended", "/calls?status=ended"),
        ("/agents/a1/edit", "/agents/a1/edit"),
        ("https://evil.example.com/", "/agents"),
        ("//evil.example.com/x", "/agents"),
        ("/\\evil.example.com", "/agents"),
        ("javascript:alert(1)", "/agents"),
        ("", "/agents"),
        (None, "/agents"),
    ],
)
def test_sign_in_sends_the_viewer_to_this_site_only(wanted: str | None, goes_to: str) -> None:
    assert safe_next(wanted) == goes_to


def test_csrf_token_belongs_to_its_session() -> None:
    token, token_hash = generate_session_token()
    other, _ = generate_session_token()
    assert token.startswith("vs_") and token_hash != token
    csrf = csrf_token(token)
    assert csrf_matches(token, csrf)
    assert not csrf_matches(other, csrf)
    assert not csrf_matches(token, None) and not csrf_matches(token, "")
    assert token not in csrf


def test_make_run_gives_control_api_a_password_file_and_prints_how_to_sign_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATE_DIR", str(tmp_path))
    env = first_admin_env({})
    assert env == {
        "BOOTSTRAP_ADMIN_EMAIL": "admin@example.com",
        "BOOTSTRAP_ADMIN_PASSWORD_FILE": str(tmp_path / "admin-password"),
    }
    assert "BOOTSTRAP_ADMIN_PASSWORD_FILE" not in first_admin_env({"BOOTSTRAP_ADMIN_PASSWORD": "chosen-password"})

    before = "\n".join(console_note({}))
    assert "http://127.0.0.1:8000/" in before and "sign in as admin@example.com with your password" in before
    (tmp_path / "admin-password").write_text("s3cret-generated\n")
    after = "\n".join(console_note({"BOOTSTRAP_ADMIN_EMAIL": "me@example.com"}))
    assert "sign in as me@example.com   password: s3cret-generated" in after
    assert "/agents/default-agent/talk" in after
    chosen = "\n".join(console_note({"BOOTSTRAP_ADMIN_PASSWORD": "chosen-password"}))
    assert "chosen-password" not in chosen and "BOOTSTRAP_ADMIN_PASSWORD" in chosen
