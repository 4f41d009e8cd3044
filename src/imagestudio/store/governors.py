"""Provider governor rows: read, write and apply (the decisions are in scheduler.governor)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from imagestudio.scheduler.governor import GovernorParams, GovernorState, initial_state, pace
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


@dataclasses.dataclass(frozen=True, slots=True)
class Paced:
    ids: list[int]
    tats: dict[str, float]
    wake_at: float | None


def apply_pace(
    candidates: Sequence[tuple[int, str]],
    states: dict[str, GovernorState],
    now: float,
    limit: int,
) -> Paced:
    """Walk the fair order and keep what each key's cooldown and pace allow (pure)."""
    ids: list[int] = []
    tats: dict[str, float] = {}
    wake_at: float | None = None
    for image_id, key in candidates:
        if len(ids) >= limit:
            break
        state = states.get(key)
        if state is None:
            ids.append(image_id)
            continue
        decision = pace(dataclasses.replace(state, tat=tats.get(key, state.tat)), now, 1)
        if decision.admitted:
            ids.append(image_id)
            tats[key] = decision.tat
        elif decision.next_at is not None:
            wake_at = decision.next_at if wake_at is None else min(wake_at, decision.next_at)
    return Paced(ids, tats, wake_at)
