"""Migrations against the models: ``alembic upgrade head`` then ``alembic check`` (no drift).

Runs on a fresh, empty SQLite file and a fresh, empty PostgreSQL database. The tests are sync:
``migrate()`` runs its own event loop (``asyncio.run``), so it must not be called from a
running loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from imagestudio.store.db import alembic_config, migrate
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
