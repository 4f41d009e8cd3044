"""Readiness for an orchestrator: may this process be sent traffic now?

Liveness (``/healthz``) asks whether the process works at all; readiness (``/readyz``) also
asks whether what it depends on is there: the database answers, its schema is at the
migrations' head (``imagestudio migrate`` has run), and the result storage answers (the
folder is writable, the bucket exists and the credentials reach it). Each check gives
``"ok"`` or a short reason with no secret in it (the database's own error text may carry its
URL, so only the error's type is said).
"""

from __future__ import annotations

from dataclasses import dataclass

from imagestudio.errors import StorageError
from imagestudio.runtime.services import Services
from imagestudio.store.db import head_revisions, schema_revisions

OK = "ok"


@dataclass(frozen=True, slots=True)
class Readiness:
    checks: dict[str, str]  # check name -> "ok" or the reason it failed


async def _database(services: Services) -> tuple[str, str]:
    try:
        current = await schema_revisions(services.store.engine)
    except Exception as exc:
        reason = f"unreachable ({type(exc).__name__})"
        return reason, "unknown: the database is unreachable"
    heads = head_revisions()
    if current == heads:
        return OK, OK
    shown = ", ".join(sorted(current)) or "none"
    return OK, f"at {shown}, not at head {', '.join(sorted(heads))}: run imagestudio migrate"


async def _storage(services: Services) -> str:
    try:
        await services.storage.check()
    except StorageError as exc:
        return str(exc)
    return OK


async def readiness(services: Services) -> Readiness:
    database, schema = await _database(services)
    return Readiness({"database": database, "schema": schema, "storage": await _storage(services)})
