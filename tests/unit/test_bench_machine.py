"""The bench reports the models the services actually default to."""

from __future__ import annotations

import pytest
from voice_stt.settings import SttSettings

from bench.machine import MODEL_ENV

pytestmark = pytest.mark.unit


def test_the_reported_stt_engine_default_is_the_services_default() -> None:
    assert MODEL_ENV["stt"]["STT_ENGINE"] == SttSettings().stt_engine
