"""Settings from ``IMAGESTUDIO_*`` environment variables and a ``.env`` file.

Built by ``create_app()`` and the CLI, never at import time, so tests inject their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ProviderLimit(BaseModel):
    """Limits an operator knows and pins for one ``api_base`` (default: learned)."""

    max_concurrency: int | None = Field(default=None, ge=1)
    rpm: float | None = Field(default=None, gt=0)


class ModelPrice(BaseModel):
    """One model's prices in USD (docs/costs.md): per million input text, input image and
    output tokens; per image by size (``"*"``: any size) for per-image billing; and what
    one call is estimated at before a job has seen one (the ``max_cost`` reservation)."""

    text_input_per_mtok: float = Field(default=0.0, ge=0)
    image_input_per_mtok: float = Field(default=0.0, ge=0)
    output_per_mtok: float = Field(default=0.0, ge=0)
    per_image: dict[str, float] = Field(default_factory=dict)
    estimate: float = Field(default=0.0, ge=0)


# OpenAI's published prices (docs/costs.md has the date read and the source): gpt-image-1 per
# token, unchanged since its launch on 2025-04-23; dall-e-3 per image, standard quality.
DEFAULT_PRICES: dict[str, ModelPrice] = {
    "gpt-image-1": ModelPrice(
        text_input_per_mtok=5.0, image_input_per_mtok=10.0, output_per_mtok=40.0, estimate=0.25
    ),
    "dall-e-3": ModelPrice(
        per_image={"1024x1024": 0.04, "1024x1792": 0.08, "1792x1024": 0.08, "*": 0.08},
        estimate=0.08,
    ),
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="IMAGESTUDIO_",
        env_file=".env",
        extra="ignore",
        env_file_encoding="utf-8",
        populate_by_name=True,  # the AWS_* fields below are also set by name in code
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

    # S3 storage (storage_url s3://bucket/prefix), docs/s3.md. Result URLs are presigned GETs
    # through the API's files route (expiring after s3_presign_seconds), or with
    # s3_urls="public" the objects' own URLs, under s3_public_base_url (a CDN in front of
    # the bucket's root) when set. s3_path_style None: path-style when an endpoint is set.
    s3_urls: Literal["presigned", "public"] = "presigned"
    s3_public_base_url: str | None = None
    s3_presign_seconds: int = Field(default=3600, ge=1, le=7 * 24 * 3600)
    s3_path_style: bool | None = None
    s3_acl: str | None = None  # a canned ACL put on each result, e.g. "public-read"
    # The store's address as result URLs' users reach it, when not AWS_ENDPOINT_URL (compose:
    # the workers reach http://minio:9000, a browser http://localhost:9000).
    s3_public_endpoint_url: str | None = None
    # The usual AWS settings, under their own names (no IMAGESTUDIO_ prefix). Keys left
    # unset fall back to botocore's chain: AWS_PROFILE, the shared files, SSO, instance roles.
    aws_endpoint_url: str | None = Field(
        default=None, validation_alias=AliasChoices("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
    )
    aws_region: str | None = Field(
        default=None, validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION")
    )
    aws_profile: str | None = Field(default=None, validation_alias="AWS_PROFILE")
    aws_access_key_id: str | None = Field(default=None, validation_alias="AWS_ACCESS_KEY_ID")
    aws_secret_access_key: SecretStr | None = Field(
        default=None, validation_alias="AWS_SECRET_ACCESS_KEY"
    )
    aws_session_token: SecretStr | None = Field(default=None, validation_alias="AWS_SESSION_TOKEN")

    # Intake limits. A body over max_body_bytes is refused (413) as it streams in.
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_images_per_job: int = Field(default=5000, ge=1)
    # Per-user admission: a submission past either is refused (429, Retry-After).
    max_jobs_in_flight: int = Field(default=100, ge=1)
    max_images_in_flight: int = Field(default=100_000, ge=1)
    quota_retry_after_seconds: float = Field(default=30.0, gt=0)
    max_prompt_chars: int = Field(default=32_000, ge=1)  # each template and each built prompt

    # Worker behaviour.
    # Tasks per process outside a provider call (source fetch, post-processing, storing);
    # the calls themselves follow the governors, up to worker_max_tasks tasks per process.
    worker_concurrency: int = Field(default=16, ge=1)
    worker_max_tasks: int = Field(default=512, ge=1)
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

    # Usage and cost: prices per model as JSON, merged over DEFAULT_PRICES (a model given
    # here replaces its default row).
    prices: dict[str, ModelPrice] = Field(default_factory=dict)

    # Webhooks (docs/webhooks.md): the secret for jobs that bring none (whsec_...), one try's
    # time limit, the first retry's delay (each next one x4, at most 10 hours), how long a
    # message is retried before it is given up, and how often the sender looks for work.
    webhook_secret: SecretStr | None = None
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    webhook_backoff_base_seconds: float = Field(default=5.0, ge=0)
    webhook_max_age_seconds: float = Field(default=86400.0, gt=0)
    webhook_poll_seconds: float = Field(default=1.0, gt=0)

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

    def price_table(self) -> dict[str, ModelPrice]:
        """The default prices with this setting's rows over them, by lower-case model."""
        return DEFAULT_PRICES | {model.lower(): price for model, price in self.prices.items()}

    def private_allow_list(self) -> list[str]:
        return [p.strip() for p in self.allow_private_urls.split(",") if p.strip()]
