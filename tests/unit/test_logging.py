"""Personal data in logs: nested keys redacted; numbers never as a reversible hash."""

from __future__ import annotations

import hashlib
import io
import json
from contextlib import redirect_stdout

import pytest
from voice_runtime.logging import REDACTED, configure_logging, get_logger, redact

pytestmark = pytest.mark.unit


def _log_line(personal: bool, key: str | None, **fields: object) -> dict[str, object]:
    buf = io.StringIO()
    with redirect_stdout(buf):
        configure_logging("test", personal_data=personal, redaction_key=key)
        import structlog

        structlog.reset_defaults()
        configure_logging("test", personal_data=personal, redaction_key=key)
        get_logger("t").info("evt", **fields)
    return json.loads(buf.getvalue().strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_nested_personal_keys_are_redacted() -> None:
    line = _log_line(False, None, text="my card is 4111", call={"from_number": "+15551234567", "ok": 1},
                     turns=[{"caller": "hello"}, {"speaker": "agent"}])
    dumped = json.dumps(line)
    assert "4111" not in dumped and "+1555" not in dumped and "hello" not in dumped
    assert line["text"] == REDACTED
    assert line["call"] == {"from_number": REDACTED, "ok": 1}
    assert line["turns"] == [{"caller": REDACTED}, {"speaker": "agent"}]


def test_without_a_key_numbers_are_dropped_not_hashed() -> None:
    number = "+15551234567"
    line = _log_line(False, None, from_number=number)
    unsalted = hashlib.sha256(number.encode()).hexdigest()
    assert line["from_number"] == REDACTED and unsalted[:12] not in json.dumps(line)


def test_with_a_key_the_same_number_gets_the_same_tag_and_another_key_another() -> None:
    a = redact({"from_number": "+15551234567"}, b"k1")
    b = redact({"from_number": "+15551234567"}, b"k1")
    c = redact({"from_number": "+15551234567"}, b"k2")
    assert a == b and a != c and a["from_number"].startswith("hmac:")
    assert hashlib.sha256(b"+15551234567").hexdigest()[:16] not in a["from_number"]


def test_personal_data_is_kept_only_when_asked() -> None:
    line = _log_line(True, None, text="hello there")
    assert line["text"] == "hello there"


def test_errors_about_bad_data_never_quote_the_data() -> None:
    """A malformed event's validation error names where and what, never the caller's words or number."""
    from pydantic import BaseModel, ValidationError
    from voice_runtime.logging import safe_error

    class Utterance(BaseModel):
        text: str
        number: int

    try:
        Utterance.model_validate({"text": ["my card is 4111"], "number": "call +15551234567"})
    except ValidationError as e:
        assert "4111" in str(e) and "5551234567" in str(e)  # what pydantic itself would print
        shown = safe_error(e)
        assert "4111" not in shown and "5551234567" not in shown
        assert "text" in shown and "number" in shown and "ValidationError" in shown
    assert safe_error(RuntimeError("boom")) == "RuntimeError('boom')"
