"""The suite ignores platform settings exported in the developer's shell (they once made e2e tests fail)."""

from __future__ import annotations

import os

import pytest

from tests.conftest import scrub_environment

pytestmark = pytest.mark.unit


def test_exported_platform_settings_do_not_reach_the_tests() -> None:
    for key in ("TWILIO_AUTH_TOKEN", "PUBLIC_BASE_URL", "LLM_API_KEY", "SECRETS_KEY", "BOOTSTRAP_ADMIN_KEY"):
        assert key not in os.environ, f"{key} leaked into the test session"


def test_scrub_keeps_infrastructure_locations() -> None:
    env = {"TWILIO_AUTH_TOKEN": "x", "PUBLIC_BASE_URL": "https://x", "NATS_URL": "nats://n", "LLM_BASE_URL": "u",
           "LLM_API_KEY": "k", "PATH": "/bin", "twilio_allow_unsigned": "true"}
    removed = scrub_environment(env)
    assert sorted(removed) == ["LLM_API_KEY", "PUBLIC_BASE_URL", "TWILIO_AUTH_TOKEN", "twilio_allow_unsigned"]
    assert env == {"NATS_URL": "nats://n", "LLM_BASE_URL": "u", "PATH": "/bin"}
