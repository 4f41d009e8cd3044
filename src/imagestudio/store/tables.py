"""The database tables. Alembic migrations (``store/migrations``) are checked against these.

``ai_job`` keeps the columns the seed's monitoring SQL reads (``id``, ``type``, ``status``,
``config``, ``result_image_urls``, ``created_at``, ``updated_at``); on PostgreSQL the JSON
columns are ``jsonb`` so ``jsonb_array_length(result_image_urls)`` runs as written.
"""

from __future__ import annotations

import json
import zlib
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)

Json = JSON().with_variant(JSONB(), "postgresql")
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out; stored as timestamptz, or naive UTC text on SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:  # noqa: ARG002
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class PayloadJson(TypeDecorator[dict[str, Any]]):
    """The job's payload (``ai_job.config``): ``jsonb`` on PostgreSQL, where the seed's
    monitoring SQL reads it as written; zlib-compressed JSON on SQLite.

    SQLite has no out-of-line storage for big values: every UPDATE of a job row (a claim, a
    finish) rewrites the whole row, and a 100,000-image job's payload is 9 MB of JSON (0.8 MB
    compressed). Rows written before compression (JSON text) still read back.
    """

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(JSONB())
        return dialect.type_descriptor(JSON())

    def bind_processor(self, dialect: Dialect) -> Any:
        if dialect.name == "postgresql":
            return super().bind_processor(dialect)

        def compress(value: Any) -> bytes | None:
            if value is None:
                return None
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
            return zlib.compress(text.encode(), 1)

        return compress

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        if dialect.name == "postgresql":
            return super().result_processor(dialect, coltype)

        def decompress(value: Any) -> Any:
            if isinstance(value, bytes):
                return json.loads(zlib.decompress(value))
            return json.loads(value) if isinstance(value, str) else value

        return decompress


ai_job = Table(
    "ai_job",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("type", String(32), nullable=False, server_default="image_studio"),
    Column("user_id", String(200), nullable=False),
    Column("job_id", String(200), nullable=False),
    Column("mode", String(64), nullable=False),
    Column("status", String(32), nullable=False),
    Column("config", PayloadJson, nullable=False),
    Column("payload_hash", String(64), nullable=False),
    Column("result_image_urls", Json, nullable=False),
    Column("error", Text),
    Column("total", Integer, nullable=False),
    Column("api_base", Text, nullable=False),
    Column("model", String(200), nullable=False),
    Column("api_style", String(16), nullable=False),
    Column("provider_key", String(64), nullable=False),
    Column("out_width", Integer, nullable=False),
    Column("out_height", Integer, nullable=False),
    Column("out_format", String(8), nullable=False),
    Column("out_quality", Integer, nullable=False),
    Column("max_concurrency", Integer),
    Column("sku_serial", Boolean, nullable=False, server_default="0"),
    Column("cancel_requested", Boolean, nullable=False, server_default="0"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    # Images by status, kept by every change of an image's status (``store.counts``), so the
    # roll-up and the reads never count a job's rows.
    Column("n_queued", Integer, nullable=False, server_default="0"),
    Column("n_running", Integer, nullable=False, server_default="0"),
    Column("n_succeeded", Integer, nullable=False, server_default="0"),
    Column("n_failed", Integer, nullable=False, server_default="0"),
    Column("n_cancelled", Integer, nullable=False, server_default="0"),
    # When an image of the job last started (the claim's "served longest ago" tie-break), and
    # when ``result_image_urls`` was last rebuilt from the images.
    Column("last_started_at", UTCDateTime),
    Column("urls_refreshed_at", UTCDateTime),
    UniqueConstraint("user_id", "job_id"),
    Index(None, "type", "created_at"),
    Index(None, "user_id", "created_at"),
    Index(None, "status", "created_at"),
)

ai_job_secret = Table(
    "ai_job_secret",
    metadata,
    Column("job_pk", String(36), ForeignKey("ai_job.id", ondelete="CASCADE"), primary_key=True),
    Column("api_key_enc", LargeBinary, nullable=False),
)

# A job's prompts, each text once: a job sends at most a few distinct prompts (the main
# image's and the others'), and a prompt can be long, so its images point at it by ``idx``.
ai_job_prompt = Table(
    "ai_job_prompt",
    metadata,
    Column("job_pk", String(36), ForeignKey("ai_job.id", ondelete="CASCADE"), primary_key=True),
    Column("idx", Integer, primary_key=True, autoincrement=False),
    Column("text", Text, nullable=False),
)

ai_job_image = Table(
    "ai_job_image",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("job_pk", String(36), ForeignKey("ai_job.id", ondelete="CASCADE"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("sku", String(200), nullable=False),
    Column("sku_index", Integer, nullable=False),
    Column("stem", String(300), nullable=False),
    Column("name", String(300), nullable=False),
    Column("source_url", Text, nullable=False),
    Column("prompt_idx", Integer, nullable=False, server_default="0"),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("calls", Integer, nullable=False, server_default="0"),
    Column("snoozes", Integer, nullable=False, server_default="0"),
    Column("billed_timeouts", Integer, nullable=False, server_default="0"),
    Column("fence", Integer, nullable=False, server_default="0"),
    Column("lease_owner", String(100)),
    Column("lease_expires_at", UTCDateTime),
    Column("run_after", UTCDateTime, nullable=False),
    Column("first_started_at", UTCDateTime),
    Column("started_at", UTCDateTime),
    Column("call_ended_at", UTCDateTime),
    Column("finished_at", UTCDateTime),
    Column("result_key", Text),
    Column("result_url", Text),
    Column("error", Text),
    Column("error_kind", String(64)),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("job_pk", "position"),
    Index(None, "status", "run_after"),
    # A job's images of one status in payload order: the claim's per-job heads, the roll-up's
    # ordered result URLs, paginated reads.
    Index(None, "job_pk", "status", "position"),
)

ai_job_attempt = Table(
    "ai_job_attempt",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("job_pk", String(36), ForeignKey("ai_job.id", ondelete="CASCADE"), nullable=False),
    Column("image_id", BigId, nullable=False),
    Column("fence", Integer, nullable=False),
    Column("worker", String(100), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("ended_at", UTCDateTime),
    Column("call_started_at", UTCDateTime),
    Column("call_ended_at", UTCDateTime),
    Column("outcome", String(32)),
    Column("error", Text),
    Column("wait_seconds", Float),
    Index(None, "job_pk", "started_at"),
)

ai_job_event = Table(
    "ai_job_event",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("job_pk", String(36), ForeignKey("ai_job.id", ondelete="CASCADE"), nullable=False),
    Column("type", String(32), nullable=False),
    Column("data", Json, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    # PostgreSQL: the writing transaction's id (``store.outbox``: read in (tx, id) order). 0 on
    # SQLite, whose writers are serialized, and on rows older than migration 0003.
    Column("tx", BigInteger, nullable=False, server_default="0"),
    Index(None, "job_pk", "id"),
    Index(None, "tx", "id"),
)

event_cursor = Table(
    "event_cursor",
    metadata,
    # One row per outbox consumer: the last event it acked, as its (tx, id) position.
    Column("consumer", String(200), primary_key=True),
    Column("last_tx", BigInteger, nullable=False, server_default="0"),
    Column("last_event_id", BigInteger, nullable=False, server_default="0"),
    Column("updated_at", UTCDateTime, nullable=False),
)

provider_governor = Table(
    "provider_governor",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("api_base", Text, nullable=False),
    Column("model", String(200), nullable=False),
    Column("window", Float, nullable=False),
    Column("ssthresh", Float),
    Column("ceiling", Float),
    Column("hold_until", Float, nullable=False, server_default="0"),
    Column("epoch", Float, nullable=False, server_default="0"),
    Column("cooldown_until", Float, nullable=False, server_default="0"),
    Column("rate", Float),
    Column("rate_ceiling", Float),
    Column("tat", Float, nullable=False, server_default="0"),
    Column("latency", Float),
    Column("base_latency", Float),
    Column("rate_limited", Integer, nullable=False, server_default="0"),
    Column("pinned_window", Float),
    Column("pinned_rate", Float),
    Column("updated_at", UTCDateTime, nullable=False),
)
