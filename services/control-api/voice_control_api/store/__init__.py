"""PostgreSQL access per resource (asyncpg). Every query that reads tenant data filters by tenant. Rows come
back typed: as the API's public models (``models``) where a resource is read, as frozen dataclasses where
only a use case needs them (credentials, token state), never as records or dicts."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

import asyncpg

R = TypeVar("R")


def row_as(cls: type[R], record: asyncpg.Record) -> R:
    """A record whose columns are exactly the fields of ``cls`` (a model or a dataclass), as a ``cls``."""
    return cls(**dict(record))


def set_clause(columns: Iterable[str], first_param: int) -> str:
    """``UPDATE ... SET`` for ``columns`` (bound from ``$first_param`` on), bumping the row's version."""
    sets = [f"{c} = ${i}" for i, c in enumerate(columns, start=first_param)]
    return ", ".join([*sets, "updated_at = now(), version = version + 1"])


def pick(changes: dict[str, Any], allowed: frozenset[str]) -> list[str]:
    """The columns of ``changes`` an update may write, in order."""
    return [c for c in changes if c in allowed]
