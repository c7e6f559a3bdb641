"""REST conventions shared by the routers: pagination, ETags and optimistic-concurrency preconditions."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Header, Path, Query, Response

from .fields import ID_PATTERN
from .problems import ApiError

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


@dataclass(frozen=True)
class Pagination:
    limit: int
    offset: int


def pagination(
    limit: Annotated[int, Query(ge=1, le=200, description="Page size")] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000, description="Items to skip")] = 0,
) -> Pagination:
    return Pagination(limit=limit, offset=offset)


def page(rows: list[Any], p: Pagination) -> dict[str, Any]:
    """Rows were fetched with ``LIMIT p.limit + 1``: the extra one only tells whether more exist."""
    return {"items": rows[: p.limit], "limit": p.limit, "offset": p.offset, "has_more": len(rows) > p.limit}


def expected_version(if_match: str | None, body_version: int | None) -> tuple[int | None, int | None]:
    """(version required by If-Match, version required by the body). ``*`` matches anything.
    An If-Match that is not one of our ETags can never match: it yields an impossible version (-1)."""
    header: int | None = None
    if if_match is not None and if_match.strip() != "*":
        m = _ETAG.match(if_match)
        header = int(m.group(1)) if m else -1
    return header, body_version


def check_precondition(current: int, if_match: str | None, body_version: int | None) -> None:
    header, body = expected_version(if_match, body_version)
    if header is not None and header != current:
        raise ApiError(
            412,
            f"If-Match does not match the current version ({current})",
            kind="precondition-failed",
            headers={"ETag": etag(current)},
        )
    if body is not None and body != current:
        raise ApiError(
            409,
            f"version {body} is stale; the current version is {current}",
            kind="version-conflict",
            headers={"ETag": etag(current)},
        )
