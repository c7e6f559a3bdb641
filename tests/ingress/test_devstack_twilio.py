"""`make run` lets ingress accept unsigned Twilio requests only on an all-embedded stack, and says so in its banner;
pointed at infrastructure the user gave, it leaves them refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from voice_devstack.stack import EmbeddedPostgres, Resolved, twilio_env, twilio_note

pytestmark = pytest.mark.unit


def embedded() -> Resolved:
    return Resolved("nats://127.0.0.1:4222", "postgresql://postgres@127.0.0.1:55432/voice_platform",
                    "http://127.0.0.1:8090/v1", nats_cmd=["nats-server"], llm_cmd=["llama"],
                    postgres=EmbeddedPostgres(Path("/nonexistent")))


def test_an_all_embedded_stack_allows_unsigned_twilio_and_says_so() -> None:
    env = twilio_env(embedded(), {})
    assert env == {"TWILIO_ALLOW_UNSIGNED": "true"}
    assert "NOT checked" in twilio_note(env)


@pytest.mark.parametrize("given", ["NATS_URL", "DATABASE_URL", "LLM_BASE_URL"])
def test_real_infrastructure_keeps_unsigned_twilio_refused(given: str) -> None:
    r = embedded()
    if given == "NATS_URL":
        r.nats_cmd = None
    elif given == "DATABASE_URL":
        r.postgres = None
    else:
        r.llm_cmd = None
    user = {given: "set-by-the-user"}
    assert twilio_env(r, user) == {}
    assert "refuses" in twilio_note(user)


def test_a_found_local_server_is_not_embedded_either() -> None:
    r = embedded()
    r.nats_cmd = None  # a NATS server already listening on 4222: not started by `make run`
    assert twilio_env(r, {}) == {}


def test_the_users_own_twilio_settings_win() -> None:
    assert twilio_env(embedded(), {"TWILIO_AUTH_TOKEN": "tok"}) == {}
    assert "checked with TWILIO_AUTH_TOKEN" in twilio_note({"TWILIO_AUTH_TOKEN": "tok"})
    assert twilio_env(embedded(), {"TWILIO_ALLOW_UNSIGNED": "false"}) == {}
    assert "refuses" in twilio_note({"TWILIO_ALLOW_UNSIGNED": "false"})


def test_make_run_gives_the_secrets_key_only_to_the_services_that_use_it(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from voice_devstack import stack

    monkeypatch.setenv("STATE_DIR", str(tmp_path))
    key = stack.dev_secrets_key({})
    assert key == stack.dev_secrets_key({}), "generated once, then reused"
    assert (tmp_path / "secrets.key").stat().st_mode & 0o777 == 0o600
    token_key = stack.dev_secrets_key({}, "CALL_TOKEN_KEY", "call-token.key")
    assert token_key != key and (tmp_path / "call-token.key").stat().st_mode & 0o777 == 0o600
    assert stack.dev_secrets_key({"CALL_TOKEN_KEY": "mine"}, "CALL_TOKEN_KEY", "call-token.key") == "mine"
    env = {"SECRETS_KEY": "leaked", "CALL_TOKEN_KEY": "leaked", "PATH": "/bin"}
    for name, _, _ in stack.SERVICES:
        got = stack.service_env(name, env, key, token_key)
        assert got.get("SECRETS_KEY") == (key if name in ("control-api", "brain", "analytics", "ingress")
                                          else None), name
        assert got.get("CALL_TOKEN_KEY") == (token_key if name in ("control-api", "ingress") else None), name
