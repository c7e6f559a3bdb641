"""structlog JSON logging with call_id / tenant_id context and personal-data redaction."""

from __future__ import annotations

import hashlib
import logging
import sys
from typing import Any

import structlog

# Keys whose values may carry caller speech, prompts or phone numbers.
PERSONAL_KEYS = frozenset(
    {"text", "transcript", "prompt", "from_number", "to_number", "number", "phone", "caller", "callee",
     "messages", "reply", "target"}
)


def _redactor(keep: bool) -> Any:
    def redact(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        if keep:
            return event_dict
        for key in PERSONAL_KEYS.intersection(event_dict):
            value = str(event_dict[key])
            event_dict[key] = "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:12]
        return event_dict

    return redact


def configure_logging(service: str, level: str = "INFO", fmt: str = "json", personal_data: bool = False) -> None:
    lvl = logging.getLevelName(level.upper())
    if not isinstance(lvl, int):
        lvl = logging.INFO
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redactor(personal_data),
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
