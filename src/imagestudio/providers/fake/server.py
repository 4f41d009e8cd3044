"""Serve a fake provider app over HTTP with uvicorn (the ``imagestudio fake-provider`` command)."""

from __future__ import annotations

import uvicorn

from imagestudio.providers.fake.app import create_fake_provider_app
from imagestudio.providers.fake.config import FakeProviderConfig


def run_fake_provider(host: str, port: int, config: FakeProviderConfig) -> None:
    """Serve a fake provider with uvicorn until interrupted (blocking; used by the CLI)."""
    uvicorn.run(
        create_fake_provider_app(config),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
    )
