"""Reusable field types and validators for request and response models (pure, no I/O)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import urlsplit

import phonenumbers
from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$")
_LANG = r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8}){0,3}$"


def clean_text(value: str) -> str:
    """PostgreSQL text cannot hold NUL, and lone surrogates are not UTF-8: refuse both (422, not 500)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError("must be valid Unicode text") from e
    return value


def normalize_e164(value: str) -> str:
    """'+1 (415) 555-0100' -> '+14155550100'. The number must carry its country code and be a
    possible number for that country (assigned-range checks are left to the carrier)."""
    if not isinstance(value, str):
        raise ValueError("must be a string")
    raw = value.strip()
    if not raw.startswith("+"):
        raise ValueError("must be in E.164 form, starting with + and the country code")
    if not re.fullmatch(r"\+[0-9 ()./-]{6,24}", raw):
        raise ValueError("must be in E.164 form, e.g. +14155550100")
    try:
        parsed = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException as e:
        raise ValueError(f"not a phone number: {e}") from None
    if not phonenumbers.is_possible_number(parsed):
        raise ValueError("not a possible phone number for its country code")
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    if not re.fullmatch(r"\+[1-9][0-9]{5,14}", e164):
        raise ValueError("must be in E.164 form, e.g. +14155550100")
    return e164


def check_email(value: str) -> str:
    value = value.strip()
    if not _EMAIL.fullmatch(value):
        raise ValueError("not an email address")
    return value.lower()


def check_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http(s) URL")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials")
    return value


def to_utc(value: datetime | None) -> datetime | None:
    """Naive times are UTC; everything is normalised to UTC (out-of-range offsets are a 422, not a 500)."""
    if value is None:
        return None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (OverflowError, ValueError) as e:
        raise ValueError("time out of range") from e


def _strip(value: object) -> object:
    return value.strip() if isinstance(value, str) else value


Id = Annotated[str, StringConstraints(pattern=ID_PATTERN), Field(examples=["3f1c9a2be07d4c4f9a0d7f35c2a1b6e4"])]
Name = Annotated[
    str, BeforeValidator(_strip), StringConstraints(min_length=1, max_length=200), AfterValidator(clean_text)
]
ShortText = Annotated[str, StringConstraints(max_length=200), AfterValidator(clean_text)]
Description = Annotated[str, StringConstraints(max_length=2000), AfterValidator(clean_text)]
LongText = Annotated[str, StringConstraints(max_length=32_000), AfterValidator(clean_text)]
Language = Annotated[str, StringConstraints(pattern=_LANG, max_length=35), Field(examples=["en", "en-US"])]
E164 = Annotated[
    str,
    StringConstraints(min_length=1, max_length=32),
    AfterValidator(clean_text),
    AfterValidator(normalize_e164),
    Field(examples=["+14155550100"]),
]
Email = Annotated[
    str,
    StringConstraints(min_length=3, max_length=254),
    AfterValidator(clean_text),
    AfterValidator(check_email),
    Field(examples=["ops@example.com"]),
]
Password = Annotated[
    str,
    StringConstraints(min_length=8, max_length=256),
    AfterValidator(clean_text),
    Field(examples=["correct horse battery staple"]),
]
HttpUrl = Annotated[
    str,
    StringConstraints(min_length=8, max_length=2000),
    AfterValidator(clean_text),
    AfterValidator(check_http_url),
    Field(examples=["https://hooks.example.com/voice"]),
]
UtcDatetime = Annotated[datetime, AfterValidator(to_utc)]
