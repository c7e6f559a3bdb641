"""REST conventions shared by the routers: paths, pagination, ETags and If-Match."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Header, Path, Query, Response

from .fields import ID_PATTERN
from .usecases.common import ExpectedVersion, Pagination

_ETAG = re.compile(r'^\s*(?:W/)?"?(\d{1,9})"?\s*$')

IdPath = Annotated[str, Path(pattern=ID_PATTERN, description="Resource id")]

IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description='The ETag you last read (e.g. `"3"`). The update is refused with 412 when it is stale.',
    ),
]


def etag(version: int) -> str:
    return f'"{version}"'


def set_etag(response: Response, version: int) -> None:
    response.headers["ETag"] = etag(version)


def pagination(
    limit: Annotated[int, Query(ge=1, le=200, description="Page size")] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000, description="Items to skip")] = 0,
) -> Pagination:
    return Pagination(limit=limit, offset=offset)


def expected_version(if_match: str | None, body_version: int | None = None) -> ExpectedVersion:
    """The version required by If-Match (``*`` matches anything) and by the body. An If-Match that is not one
    of our ETags can never match: it requires an impossible version (-1)."""
    header: int | None = None
    if if_match is not None and if_match.strip() != "*":
        m = _ETAG.match(if_match)
        header = int(m.group(1)) if m else -1
    return ExpectedVersion(precondition=header, version=body_version)
