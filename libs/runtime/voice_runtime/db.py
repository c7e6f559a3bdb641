"""PostgreSQL access shared by control-api and analytics: database creation, pool, migrations.

Migrations are plain SQL files in ``migrations/`` applied in name order, each once, under an
advisory lock so concurrent starters do not race. Re-running is a no-op.
"""

from __future__ import annotations

import re
from importlib import resources
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from .logging import get_logger

log = get_logger(__name__)
_LOCK_ID = 0x766F696365  # "voice"
_DBNAME = re.compile(r"^[A-Za-z0-9_]+$")


async def ensure_database(dsn: str) -> None:
    """Create the database named in the DSN when the server exists but the database does not."""
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
        await conn.close()
        return
    except asyncpg.InvalidCatalogNameError:
        pass
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/")
    if not _DBNAME.fullmatch(name):
        raise ValueError("database name must be [A-Za-z0-9_]+")
    admin = urlunsplit(parts._replace(path="/postgres"))
    conn = await asyncpg.connect(admin, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        log.info("database_created", database=name)
    except asyncpg.DuplicateDatabaseError:
        pass
    finally:
        await conn.close()


def migration_files() -> list[tuple[str, str]]:
    root = resources.files("voice_runtime") / "migrations"
    files = sorted((p.name, p.read_text()) for p in root.iterdir() if p.name.endswith(".sql"))
    return files


async def migrate(pool: asyncpg.Pool) -> list[str]:
    """Apply pending migrations; returns the names applied now."""
    applied: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
            for name, sql in migration_files():
                if name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations(name) VALUES ($1)", name)
                applied.append(name)
                log.info("migration_applied", name=name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
    return applied


async def connect(dsn: str, *, min_size: int = 1, max_size: int = 10, run_migrations: bool = True) -> asyncpg.Pool:
    await ensure_database(dsn)
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, command_timeout=30)
    assert pool is not None
    if run_migrations:
        await migrate(pool)
    return pool
