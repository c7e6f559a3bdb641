"""What the use cases share: a connection or a transaction from the pool, pages of lists, expected versions."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import asyncpg

from ..context import AppContext
from .errors import NotFound, PreconditionFailed, StaleVersion

T = TypeVar("T")


@contextlib.asynccontextmanager
async def connection(ctx: AppContext) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection for reads that need no transaction."""
    async with ctx.pool.acquire() as conn:
        yield conn


@contextlib.asynccontextmanager
async def transaction(ctx: AppContext) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection in a transaction: committed when the block ends, rolled back when it raises."""
    async with ctx.pool.acquire() as conn, conn.transaction():
        yield conn


def found(row: T | None, what: str) -> T:
    """``row``, which a lookup that found nothing (or nothing this principal may see) left None."""
    if row is None:
        raise NotFound(what)
    return row


@dataclass(frozen=True)
class Listing(Generic[T]):
    """One page of a list."""

    items: list[T]
    limit: int
    offset: int
    has_more: bool


@dataclass(frozen=True)
class Pagination:
    limit: int
    offset: int

    @property
    def fetch(self) -> int:
        """Rows to ask the store for: one more than the page, which only tells whether more exist."""
        return self.limit + 1

    def page(self, rows: list[T]) -> Listing[T]:
        """The page of ``rows`` fetched with ``LIMIT self.fetch OFFSET self.offset``."""
        return Listing(rows[: self.limit], self.limit, self.offset, len(rows) > self.limit)


@dataclass(frozen=True)
class ExpectedVersion:
    """The version a write is based on: ``precondition`` (If-Match) and ``version`` (in the body), each
    checked when given."""

    precondition: int | None = None
    version: int | None = None

    def check(self, current: int) -> None:
        if self.precondition is not None and self.precondition != current:
            raise PreconditionFailed(current)
        if self.version is not None and self.version != current:
            raise StaleVersion(self.version, current)


async def fetch_page(
    ctx: AppContext, paging: Pagination, query: Callable[..., Awaitable[list[T]]], *args: Any, **filters: Any
) -> Listing[T]:
    """The page ``paging`` asks for of ``query(conn, *args, **filters, limit=..., offset=...)``, a store's list."""
    async with connection(ctx) as conn:
        rows = await query(conn, *args, **filters, limit=paging.fetch, offset=paging.offset)
    return paging.page(rows)
