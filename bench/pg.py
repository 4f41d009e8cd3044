"""Scratch PostgreSQL databases for the benchmarks (``IMAGESTUDIO_BENCH_PG``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import uuid
from collections.abc import Iterator

import asyncpg

from imagestudio.store.db import migrate

PG_DSN = os.environ.get("IMAGESTUDIO_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def sa_url(database: str) -> str:
    """The SQLAlchemy URL of ``database`` on the benchmark's server."""
    base = PG_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{database}"


async def admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_DSN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def available(without: str) -> bool:
    """Whether PostgreSQL answers; if not, say what the run does ``without`` it."""
    try:
        asyncio.run(admin("SELECT 1"))
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"PostgreSQL unreachable ({exc}): {without}", file=sys.stderr, flush=True)
        return False
    return True


@contextlib.contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """A new, migrated database, dropped afterwards; yields its SQLAlchemy URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        url = sa_url(name)
        migrate(url)
        yield url
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
