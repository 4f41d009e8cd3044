"""The submitted payload: the front end's ``batch_series_generate`` body as the seed shows it.

Unknown extra fields are kept (``extra="allow"``) so that ``ai_job.config`` stores what was
sent, minus the API key.

Precedence of output settings (documented in docs/payload.md):
``options.target_width``/``target_height``/``output_format``/``quality`` win over
``options.settings.imageSize``/``imageFormat``/``quality``; when neither is given the
defaults are 1024x1024 png at quality 90.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from imagestudio.policy.webhooks import shown_url
from imagestudio.providers.registry import is_api_style, unknown_api_style

SUPPORTED_MODES = ("batch_series_generate", "single_generate")
BATCH_SKU = "__batch__"
MAX_JOB_CONCURRENCY = 10_000  # a per-job cap above this means none (and stays in int64)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


# The longest values the tables hold (PostgreSQL enforces them; SQLite does not).
MAX_SKU = 200
MAX_STEM = 300
MAX_MODEL = 200
Sku = Annotated[str, StringConstraints(max_length=MAX_SKU)]


class SourceImage(_Open):
    url: str
    name: str | None = Field(default=None, max_length=MAX_STEM)
    stem: str | None = Field(default=None, max_length=MAX_STEM)


class OutputSettings(_Open):
    image_size: str | None = Field(default=None, alias="imageSize")
    image_format: str | None = Field(default=None, alias="imageFormat")
    quality: int | None = None


class JobOptions(_Open):
    skus: list[Sku] = Field(default_factory=list)
    sku_images_map: dict[Sku, list[SourceImage]] = Field(default_factory=dict)
    settings: OutputSettings = Field(default_factory=OutputSettings)
    api_key: str | None = None
    api_base: str | None = None
    model: str | None = Field(default=None, max_length=MAX_MODEL)
    target_width: int | None = None
    target_height: int | None = None
    output_format: str | None = None
    quality: int | None = None
    use_english: bool = False
    prompt_templates: dict[str, str] = Field(default_factory=dict)
    api_style: str | None = None  # one of ``providers.registry.ADAPTERS``; None: by model
    max_concurrency: int | None = Field(default=None, ge=1, le=MAX_JOB_CONCURRENCY)
    sku_serial: bool = False
    max_cost: float | None = Field(default=None, gt=0)  # USD, estimated (docs/costs.md)
    webhook_url: str | None = None
    webhook_secret: str | None = None  # whsec_...; sealed, never stored in config
    webhook_image_events: bool = False

    @field_validator("api_style")
    @classmethod
    def _known_api_style(cls, value: str | None) -> str | None:
        if value is not None and not is_api_style(value):
            raise ValueError(unknown_api_style(value))
        return value


class JobPayload(_Open):
    job_id: str | None = Field(default=None, min_length=1, max_length=200)
    user_id: str | None = Field(default=None, max_length=200)
    mode: str
    sku: str | None = None
    stem: str | None = None
    options: JobOptions

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, value: str) -> str:
        if value not in SUPPORTED_MODES:
            raise ValueError(f"unknown mode {value!r}; supported: {', '.join(SUPPORTED_MODES)}")
        return value


def payload_hash(config: dict[str, Any]) -> str:
    """A stable digest of a payload (without its API key): same payload, same hash."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def redacted_config(payload: JobPayload) -> dict[str, Any]:
    """The payload as JSON with the API key and the webhook secret removed, and the webhook
    URL without credentials or query (``shown_url``): what ``ai_job.config`` stores. The
    whole URL and the secret are sealed beside the job (``ai_job_webhook``)."""
    config = payload.model_dump(mode="json", by_alias=True, exclude_none=False)
    options = config["options"]
    options.pop("api_key", None)
    options.pop("webhook_secret", None)
    if options.get("webhook_url"):
        options["webhook_url"] = shown_url(options["webhook_url"])
    return config
