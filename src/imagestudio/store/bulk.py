"""Many rows at once: a job's images (and their prompts) at intake.

A 100,000-image job is 100,000 rows. Going through a compiled Core ``insert()`` spends most of
the time binding parameters row by row (two UTC datetimes each); here every value that is the
same for all rows is bound once, and the rows go to the driver as plain tuples: PostgreSQL's
``COPY`` (asyncpg ``copy_records_to_table``), SQLite's ``executemany`` in batches. Both run on
the caller's connection, inside its transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import Column, Table
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from imagestudio.domain import ImageSpec, ImageStatus
from imagestudio.store.tables import ai_job_image, ai_job_prompt

SQLITE_BATCH = 10_000
IMAGE_COLUMNS = (
    "job_pk",
    "position",
    "sku",
    "sku_index",
    "stem",
    "name",
    "source_url",
    "prompt_idx",
    "status",
    "run_after",
    "updated_at",
)


async def insert_images(
    conn: AsyncConnection, job_pk: str, images: Sequence[ImageSpec], now: datetime
) -> None:
    """Insert the job's images, all ``queued`` and due ``now``, and its prompts: each
    distinct text once (``ai_job_prompt``), numbered in order of first use."""
    stamp = bind_value(conn, ai_job_image.c.run_after, now)
    queued = ImageStatus.QUEUED.value
    prompts: dict[str, int] = {}
    rows = [
        (
            job_pk,
            image.position,
            image.sku,
            image.sku_index,
            image.stem,
            image.name,
            image.source_url,
            prompts.setdefault(image.prompt, len(prompts)),
            queued,
            stamp,
            stamp,
        )
        for image in images
    ]
    texts = [(job_pk, idx, text) for text, idx in prompts.items()]
    await insert_rows(conn, ai_job_prompt, ("job_pk", "idx", "text"), texts)
    await insert_rows(conn, ai_job_image, IMAGE_COLUMNS, rows)


def bind_value(conn: AsyncConnection, column: Column[Any], value: Any) -> Any:
    """``value`` as the driver takes it for ``column`` (its type's bind processing, once)."""
    process = column.type.bind_processor(conn.dialect)
    return process(value) if process is not None else value


async def insert_rows(
    conn: AsyncConnection, table: Table, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """Insert driver-ready tuples (values already bound, see ``bind_value``) into ``table``."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        await _copy(conn, table, columns, rows)
        return
    names = ", ".join(f'"{c}"' for c in columns)
    marks = ", ".join("?" for _ in columns)
    statement = f'INSERT INTO "{table.name}" ({names}) VALUES ({marks})'
    for start in range(0, len(rows), SQLITE_BATCH):
        await conn.exec_driver_sql(statement, list(rows[start : start + SQLITE_BATCH]))


async def _copy(
    conn: AsyncConnection, table: Table, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """PostgreSQL ``COPY`` on the connection's own asyncpg connection (its transaction);
    the driver's errors become SQLAlchemy's, as for any other statement."""
    raw = await conn.get_raw_connection()
    try:
        await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
            table.name, records=rows, columns=list(columns)
        )
    except asyncpg.PostgresError as exc:
        violated = isinstance(exc, asyncpg.IntegrityConstraintViolationError)
        raise (IntegrityError if violated else DBAPIError)(f"COPY {table.name}", None, exc) from exc
