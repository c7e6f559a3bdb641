"""PostgreSQL access per resource (asyncpg). Every query that reads tenant data filters by tenant; every
function returns typed rows (frozen dataclasses), never records or dicts."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

import asyncpg

R = TypeVar("R")


def row_as(cls: type[R], record: asyncpg.Record) -> R:
    """A record whose columns are exactly the fields of ``cls``, as that dataclass."""
    return cls(**dict(record))


def set_clause(columns: Iterable[str], first_param: int) -> str:
    """``UPDATE ... SET`` for ``columns`` (bound from ``$first_param`` on), bumping the row's version."""
    sets = [f"{c} = ${i}" for i, c in enumerate(columns, start=first_param)]
    return ", ".join([*sets, "updated_at = now(), version = version + 1"])


def pick(changes: dict[str, Any], allowed: frozenset[str]) -> list[str]:
    """The columns of ``changes`` an update may write, in order."""
    return [c for c in changes if c in allowed]
