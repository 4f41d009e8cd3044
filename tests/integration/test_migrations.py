"""Migrations against the models: ``alembic upgrade head`` then ``alembic check`` (no drift).

Runs on a fresh, empty SQLite file and a fresh, empty PostgreSQL database. The tests are sync:
``migrate()`` runs its own event loop (``asyncio.run``), so it must not be called from a
running loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from imagestudio.store.db import alembic_config, create_engine, migrate
from testkit import pg


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no tables at all (not the migrated template's clone)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'nested' / 'fresh.db'}"
        return
    request.getfixturevalue("pg_template")  # skips (or fails under CI) without PostgreSQL
    with pg.scratch_database("imagestudio_m", migrated=False) as url:
        yield url


def test_upgrade_head_then_check_finds_no_drift(empty_db_url: str) -> None:
    config = alembic_config(empty_db_url)
    with pytest.raises(CommandError, match="not up to date"):
        command.check(config)
    migrate(empty_db_url)
    command.check(config)


def test_upgrade_is_idempotent(empty_db_url: str) -> None:
    migrate(empty_db_url)
    migrate(empty_db_url)
    command.check(alembic_config(empty_db_url))


def test_downgrade_to_base_and_up_again(empty_db_url: str) -> None:
    config = alembic_config(empty_db_url)
    migrate(empty_db_url)
    command.downgrade(config, "base")
    with pytest.raises(CommandError, match="not up to date"):
        command.check(config)
    migrate(empty_db_url)
    command.check(config)


def test_one_head() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite+aiosqlite:///unused.db"))
    assert len(script.get_heads()) == 1


def test_migrated_template_matches_the_models(db_url: str) -> None:
    """What the other tests run on (a clone of the template, or a fresh SQLite) has no drift."""
    migrate(db_url)
    command.check(alembic_config(db_url))


def test_prompts_move_to_their_own_table_and_back(empty_db_url: str) -> None:
    """0005: each job's distinct prompts land in ``ai_job_prompt`` numbered by first use, the
    images point at theirs; a downgrade puts every image's own copy back."""
    config = alembic_config(empty_db_url)
    command.upgrade(config, "0004")
    job = (
        "INSERT INTO ai_job (id, type, user_id, job_id, mode, status, config, payload_hash, "
        "result_image_urls, total, api_base, model, api_style, provider_key, out_width, "
        "out_height, out_format, out_quality, sku_serial, cancel_requested, created_at, "
        "updated_at) VALUES (:pk, 'image_studio', 'u', :pk, 'batch', 'queued', '{}', 'h', '[]', "
        "3, 'http://p', 'm', 'images', 'k', 64, 64, 'png', 90, false, false, :t, :t)"
    )
    image = (
        "INSERT INTO ai_job_image (job_pk, position, sku, sku_index, stem, name, source_url, "
        "prompt, status, run_after, updated_at) VALUES (:pk, :n, 'S', :n, :stem, :stem, 'u', "
        ":prompt, 'queued', :t, :t)"
    )
    stamp = datetime(2026, 12, 4, tzinfo=UTC)
    plan = {"j1": ["main", "other", "other"], "j2": ["solo"]}
    rows: list[tuple[str, dict[str, Any]]] = []
    for pk, prompts in plan.items():
        rows.append((job, {"pk": pk, "t": stamp}))
        for n, prompt in enumerate(prompts):
            rows.append(
                (image, {"pk": pk, "n": n, "stem": f"{pk}-{n}", "prompt": prompt, "t": stamp})
            )
    _sql(empty_db_url, *rows)
    command.upgrade(config, "head")
    texts, pointers = _sql(
        empty_db_url,
        ("SELECT job_pk, idx, text FROM ai_job_prompt ORDER BY job_pk, idx", {}),
        ("SELECT job_pk, position, prompt_idx FROM ai_job_image ORDER BY stem", {}),
    )
    assert texts == [("j1", 0, "main"), ("j1", 1, "other"), ("j2", 0, "solo")]
    assert pointers == [("j1", 0, 0), ("j1", 1, 1), ("j1", 2, 1), ("j2", 0, 0)]
    command.downgrade(config, "0004")
    (back,) = _sql(empty_db_url, ("SELECT job_pk, prompt FROM ai_job_image ORDER BY stem", {}))
    assert back == [("j1", "main"), ("j1", "other"), ("j1", "other"), ("j2", "solo")]


def _sql(url: str, *statements: tuple[str, dict[str, Any]]) -> list[list[tuple[Any, ...]]]:
    """Run ``statements`` in one transaction on ``url``; the rows each returned."""

    async def run() -> list[list[tuple[Any, ...]]]:
        engine = create_engine(url)
        try:
            async with engine.begin() as conn:
                found = []
                for statement, params in statements:
                    result = await conn.execute(sa.text(statement), params)
                    found.append([tuple(r) for r in result.all()] if result.returns_rows else [])
                return found
        finally:
            await engine.dispose()

    return asyncio.run(run())
