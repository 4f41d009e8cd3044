"""Settings from ``IMAGESTUDIO_*`` environment variables and a ``.env`` file.

Built by ``create_app()`` and the CLI, never at import time, so tests inject their own.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ProviderLimit(BaseModel):
    """Limits an operator knows and pins for one ``api_base`` (default: learned)."""

    max_concurrency: int | None = Field(default=None, ge=1)
    rpm: float | None = Field(default=None, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="IMAGESTUDIO_", env_file=".env", extra="ignore", env_file_encoding="utf-8"
    )

    data_dir: Path = Path(".imagestudio")
    database_url: str | None = None
    storage_url: str | None = None
    api_tokens: SecretStr = SecretStr("")
    # With API tokens set, /metrics answers only this bearer token (it lists every user's
    # provider keys); unset there, /metrics is closed. Local mode leaves it open (loopback).
    metrics_token: SecretStr | None = None
    secret_key: SecretStr | None = None
    allow_private_urls: str = ""
    public_base_url: str | None = None
    # With API tokens set, result URLs in answers are signed for this long (files route).
    files_url_ttl_seconds: float = Field(default=3600.0, ge=60)

    # Intake limits. A body over max_body_bytes is refused (413) as it streams in.
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_images_per_job: int = Field(default=5000, ge=1)
    # Per-user admission: a submission past either is refused (429, Retry-After).
    max_jobs_in_flight: int = Field(default=100, ge=1)
    max_images_in_flight: int = Field(default=100_000, ge=1)
    quota_retry_after_seconds: float = Field(default=30.0, gt=0)
    max_prompt_chars: int = Field(default=32_000, ge=1)  # each template and each built prompt

    # Worker behaviour.
    worker_concurrency: int = Field(default=16, ge=1)
    lease_seconds: float = Field(default=30.0, gt=0)
    poll_interval: float = Field(default=0.5, gt=0)
    events_poll_seconds: float = Field(default=0.5, gt=0)
    max_attempts: int = Field(default=4, ge=1)
    max_rate_limit_snoozes: int = Field(default=50, ge=0)
    max_billed_timeouts: int = Field(default=1, ge=0)
    image_deadline_seconds: float = Field(default=1800.0, gt=0)
    backoff_base_seconds: float = Field(default=1.0, ge=0)
    backoff_max_seconds: float = Field(default=60.0, ge=0)

    # Provider limits pinned per api_base, as JSON: {"https://api.openai.com/v1":
    # {"max_concurrency": 8, "rpm": 500}}. Keys not listed are governed adaptively.
    provider_limits: dict[str, ProviderLimit] = Field(default_factory=dict)
    governor_initial_window: float = Field(default=4.0, ge=1)

    # Source fetch and provider calls.
    source_max_bytes: int = Field(default=25 * 1024 * 1024, ge=1)
    source_timeout_seconds: float = Field(default=30.0, gt=0)
    # A total deadline per provider call (connect, upload, answer, result URL download).
    provider_timeout_seconds: float = Field(default=180.0, gt=0)
    # The cap on a provider's answer (b64_json) and on a result URL, counted on the stream.
    provider_max_answer_bytes: int = Field(default=32 * 1024 * 1024, ge=1)
    max_pixels: int = Field(default=64_000_000, ge=1)

    # Worker processes for decode/resize/encode; None = one per core, 0 = threads instead.
    imaging_processes: int | None = Field(default=None, ge=0)

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'imagestudio.db').resolve()}"

    @property
    def effective_storage_url(self) -> str:
        return self.storage_url or str((self.data_dir / "results").resolve())

    @property
    def is_sqlite(self) -> bool:
        return self.effective_database_url.startswith("sqlite")

    def token_users(self) -> dict[str, str]:
        """``token=user_id,token2=user_id2`` as a mapping of token to user id."""
        pairs = [p.strip() for p in self.api_tokens.get_secret_value().split(",") if p.strip()]
        users: dict[str, str] = {}
        for pair in pairs:
            token, sep, user = pair.partition("=")
            if not sep or not token.strip() or not user.strip():
                raise ValueError("IMAGESTUDIO_API_TOKENS must look like token=user_id,...")
            users[token.strip()] = user.strip()
        return users

    def provider_pins(self) -> dict[str, tuple[float | None, float | None]]:
        """Pinned (window, starts per second) by api_base."""
        return {
            base.rstrip("/"): (
                float(limit.max_concurrency) if limit.max_concurrency else None,
                limit.rpm / 60 if limit.rpm else None,
            )
            for base, limit in self.provider_limits.items()
        }

    def private_allow_list(self) -> list[str]:
        return [p.strip() for p in self.allow_private_urls.split(",") if p.strip()]
