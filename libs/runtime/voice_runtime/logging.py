"""structlog JSON logging with call_id / tenant_id context and personal-data redaction."""

from __future__ import annotations

import hashlib
import hmac
import logging
import sys
from typing import Any

import structlog

# Keys whose values may carry caller speech, prompts or phone numbers.
PERSONAL_KEYS = frozenset(
    {"text", "transcript", "prompt", "from_number", "to_number", "number", "phone", "caller", "callee",
     "messages", "reply", "target"}
)


REDACTED = "[redacted]"
_MAX_DEPTH = 6


def redact_value(value: Any, key: bytes | None) -> str:
    """A personal value as logs show it: a keyed hash (same value, same tag, within one deployment; not
    reversible by enumerating numbers without the key) or, with no key configured, nothing at all."""
    if key is None:
        return REDACTED
    return "hmac:" + hmac.new(key, str(value).encode(), hashlib.sha256).hexdigest()[:16]


def redact(value: Any, key: bytes | None, depth: int = 0) -> Any:
    """Redact personal keys at any depth of dicts, lists and tuples."""
    if depth > _MAX_DEPTH:
        return REDACTED
    if isinstance(value, dict):
        return {k: (redact_value(v, key) if isinstance(k, str) and k.lower() in PERSONAL_KEYS
                    else redact(v, key, depth + 1)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, key, depth + 1) for v in value]
    return value


def _redactor(keep: bool, key: bytes | None) -> Any:
    def processor(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        if keep:
            return event_dict
        return redact(event_dict, key)

    return processor


def configure_logging(service: str, level: str = "INFO", fmt: str = "json", personal_data: bool = False,
                      redaction_key: str | None = None) -> None:
    lvl = logging.getLevelName(level.upper())
    if not isinstance(lvl, int):
        lvl = logging.INFO
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redactor(personal_data, redaction_key.encode() if redaction_key else None),
        structlog.processors.format_exc_info,
    ]
    renderer: Any = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    # stdlib loggers (uvicorn, nats) go through a plain handler at the same level
    logging.basicConfig(level=max(lvl, logging.INFO), stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)


bind_call = structlog.contextvars.bound_contextvars


def safe_error(e: BaseException, limit: int = 300) -> str:
    """An exception as text for a log line or a dead letter, never quoting the data that caused it.

    A pydantic ``ValidationError`` quotes its input (a transcript, a caller number inside an event); it is
    rendered as its error locations and messages only. Other exceptions keep their ``repr``."""
    from pydantic import ValidationError

    if isinstance(e, ValidationError):
        parts = [f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', '')}" for err in e.errors()[:5]]
        text = f"ValidationError({e.title}: {'; '.join(parts)})"
    else:
        text = repr(e)
    return text[:limit]
