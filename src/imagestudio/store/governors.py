"""Provider governor rows: read, write and apply (the decisions are in scheduler.governor)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Row, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from imagestudio.policy.governor import GovernorParams, GovernorState, initial_state
from imagestudio.store.tables import provider_governor

STATE_FIELDS = [f.name for f in dataclasses.fields(GovernorState)]


def to_state(row: Row[Any]) -> GovernorState:
    return GovernorState(**{name: getattr(row, name) for name in STATE_FIELDS})


def state_values(state: GovernorState) -> dict[str, Any]:
    return {name: getattr(state, name) for name in STATE_FIELDS}


async def ensure(
    conn: AsyncConnection,
    *,
    key: str,
    api_base: str,
    model: str,
    params: GovernorParams,
    pins: tuple[float | None, float | None],
    now: datetime,
) -> None:
    """Create the key's governor (keeping a learned state if it exists); apply the pins."""
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    state = initial_state(params, window=pins[0], rate=pins[1])
    stmt = dialect_insert(provider_governor).values(
        key=key, api_base=api_base, model=model, updated_at=now, **state_values(state)
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["key"],
        set_={"pinned_window": pins[0], "pinned_rate": pins[1], "updated_at": now},
    )
    await conn.execute(stmt)


async def load(
    conn: AsyncConnection, keys: Iterable[str], *, lock: bool
) -> dict[str, GovernorState]:
    query = select(provider_governor).where(provider_governor.c.key.in_(sorted(set(keys))))
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return {row.key: to_state(row) for row in (await conn.execute(query)).all()}


async def save(conn: AsyncConnection, key: str, state: GovernorState, now: datetime) -> None:
    await conn.execute(
        update(provider_governor)
        .where(provider_governor.c.key == key)
        .values(updated_at=now, **state_values(state))
    )
