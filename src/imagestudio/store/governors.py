"""Provider governor rows: the key naming them, create, read, write, and the view for display.

The decisions (how a window, a pace or a cooldown moves) are pure, in ``policy.governor``;
this module only moves ``GovernorState`` values in and out of ``provider_governor``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from imagestudio.domain import ImageStatus
from imagestudio.policy.governor import GovernorParams, GovernorState, initial_state
from imagestudio.store.records import GovernorView
from imagestudio.store.tables import ai_job, ai_job_image, provider_governor

STATE_FIELDS = [f.name for f in dataclasses.fields(GovernorState)]
Pin = tuple[float | None, float | None]  # (window, starts per second) an operator fixed


@dataclasses.dataclass(frozen=True, slots=True)
class Defaults:
    """What a new governor starts from: the parameters, and the pins per API base."""

    params: GovernorParams
    pins: Mapping[str, Pin]

    def pin(self, api_base: str) -> Pin:
        return self.pins.get(api_base.rstrip("/"), (None, None))


def provider_key(api_base: str, api_key: str, model: str) -> str:
    """Identifies one provider account and model without revealing the key."""
    digest = hashlib.sha256(f"{api_base}\n{api_key}\n{model}".encode()).hexdigest()
    return digest[:32]


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
    defaults: Defaults,
    now: datetime,
) -> None:
    """Create the key's governor (keeping a learned state if it exists); apply the pins."""
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    pins = defaults.pin(api_base)
    state = initial_state(defaults.params, window=pins[0], rate=pins[1])
    stmt = dialect_insert(provider_governor).values(
        key=key, api_base=api_base, model=model, updated_at=now, **state_values(state)
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["key"],
        set_={"pinned_window": pins[0], "pinned_rate": pins[1], "updated_at": now},
    )
    await conn.execute(stmt)


async def load(
    conn: AsyncConnection, keys: Iterable[str], *, lock: bool, skip_locked: bool = False
) -> dict[str, GovernorState]:
    """The states of ``keys``; ``lock`` holds their rows until commit, in key order
    (PostgreSQL); with ``skip_locked`` a row another transaction holds is left out."""
    gov = provider_governor
    query = select(gov).where(gov.c.key.in_(sorted(set(keys)))).order_by(gov.c.key)
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=skip_locked)
    return {row.key: to_state(row) for row in (await conn.execute(query)).all()}


async def existing(conn: AsyncConnection, keys: Iterable[str]) -> set[str]:
    """Which of ``keys`` have a governor row."""
    query = select(provider_governor.c.key).where(provider_governor.c.key.in_(sorted(set(keys))))
    return {str(key) for key in (await conn.scalars(query)).all()}


async def save(conn: AsyncConnection, key: str, state: GovernorState, now: datetime) -> None:
    await conn.execute(
        update(provider_governor)
        .where(provider_governor.c.key == key)
        .values(updated_at=now, **state_values(state))
    )


async def views(conn: AsyncConnection, keys: Sequence[str] | None = None) -> list[GovernorView]:
    """The governors (all, or those of ``keys``) with their tasks in a provider call."""
    gov, running, job = provider_governor, ai_job_image, ai_job
    in_flight = (
        select(job.c.provider_key, func.count().label("n"))
        .select_from(running.join(job, job.c.id == running.c.job_pk))
        .where(running.c.status == ImageStatus.RUNNING.value, running.c.call_ended_at.is_(None))
        .group_by(job.c.provider_key)
        .subquery()
    )
    query = select(gov, func.coalesce(in_flight.c.n, 0).label("in_flight")).outerjoin(
        in_flight, in_flight.c.provider_key == gov.c.key
    )
    if keys is not None:
        query = query.where(gov.c.key.in_(list(keys)))
    rows = (await conn.execute(query.order_by(gov.c.key))).all()
    return [
        GovernorView(
            key=r.key,
            api_base=r.api_base,
            model=r.model,
            state=to_state(r),
            in_flight=int(r.in_flight),
        )
        for r in rows
    ]
