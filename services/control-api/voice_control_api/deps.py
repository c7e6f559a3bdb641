"""Annotated dependencies shared by the routers, and the error responses they document."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Query
from pydantic import AfterValidator

from .auth import Principal, authenticate, require_admin, require_platform_admin
from .context import AppContext, get_ctx
from .fields import clean_text, to_utc
from .rest import Pagination, pagination

Ctx = Annotated[AppContext, Depends(get_ctx)]
Auth = Annotated[Principal, Depends(authenticate)]
Admin = Annotated[Principal, Depends(require_admin)]
PlatformAdmin = Annotated[Principal, Depends(require_platform_admin)]
Paging = Annotated[Pagination, Depends(pagination)]


QueryText = Annotated[str | None, Query(max_length=200), AfterValidator(lambda v: None if v is None else clean_text(v))]
QueryTime = Annotated[datetime | None, Query(), AfterValidator(to_utc)]

_DESCRIPTIONS = {
    401: "Missing, invalid, expired or revoked credentials",
    403: "The credential's role does not allow this",
    404: "No such resource in your tenant (another tenant's resources are never revealed)",
    409: "Conflict: a stale `version`, a duplicate, or a resource still in use",
    412: "If-Match does not match the current ETag",
    422: "Validation failed; `errors` names each field",
    429: "Rate limit exceeded; retry after `Retry-After` seconds",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI error responses; their content (application/problem+json) is filled in by the app."""
    return {code: {"description": _DESCRIPTIONS[code]} for code in codes}


AUTHED = errors(401, 403, 422, 429)
