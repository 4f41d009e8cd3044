"""Scratch PostgreSQL databases for the tests and the benchmarks.

The server is ``IMAGESTUDIO_TEST_PG`` (tests) or ``IMAGESTUDIO_BENCH_PG`` (benchmarks), else
``postgresql://postgres@127.0.0.1:5432/postgres``. Admin statements run on a fresh thread with
their own event loop, so they work from sync code, from fixtures and from inside a running loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import asyncpg

from imagestudio.store.db import migrate

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
UNREACHABLE = (OSError, asyncpg.PostgresError)


def dsn() -> str:
    return os.environ.get("IMAGESTUDIO_TEST_PG") or os.environ.get(
        "IMAGESTUDIO_BENCH_PG", DEFAULT_DSN
    )


def sa_url(database: str) -> str:
    """The SQLAlchemy URL of ``database`` on the same server."""
    base = dsn().rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{database}"


async def _execute(sql: str) -> None:
    conn = await asyncpg.connect(dsn(), timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def admin(sql: str) -> None:
    """Run one admin statement (CREATE/DROP DATABASE, ...) on the server."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _execute(sql)).result()


def reachable() -> str | None:
    """``None`` when the server answers, else why not."""
    try:
        admin("SELECT 1")
    except UNREACHABLE as exc:
        return str(exc)
    return None


def available(without: str) -> bool:
    """Whether the server answers; if not, say on stderr what the run does ``without`` it."""
    problem = reachable()
    if problem is not None:
        print(f"PostgreSQL unreachable ({problem}): {without}", file=sys.stderr, flush=True)
    return problem is None


def create(name: str, *, template: str | None = None) -> str:
    """Create ``name`` (a copy of ``template`` if given); returns its SQLAlchemy URL."""
    admin(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    return sa_url(name)


def drop(name: str) -> None:
    admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def scratch_database(prefix: str, *, migrated: bool = True) -> Iterator[str]:
    """A new database (migrated unless told otherwise), dropped afterwards; yields its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    url = create(name)
    try:
        if migrated:
            migrate(url)
        yield url
    finally:
        drop(name)
