"""Settings for a service under test or under benchmark: no ``.env`` file is read, the data
stays in the given folder, and loopback sources and providers are allowed (the fake provider
and its sample photos run on 127.0.0.1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imagestudio.settings import Settings


def loopback_settings(data_dir: Path, database_url: str | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "allow_private_urls": "127.0.0.1",
    }
    return Settings(_env_file=None, **(values | overrides))
