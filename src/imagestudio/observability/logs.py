"""Structured logs (structlog): console lines for people, JSON lines for machines.

Every line passes through ``redact_secrets`` before it is rendered: each string in it (the
message, the values, a formatted traceback) loses the API keys the process knows
(``security.redact.KNOWN``) in all their encodings, ``sk-...`` keys and bearer tokens.
Tracebacks are plain text without local variables (structlog's rich renderer would print
every frame's locals, a job's config and its key among them).
"""

from __future__ import annotations

import copy
import logging
import sys
from collections.abc import Mapping
from typing import Any

import structlog
import uvicorn.config
import uvicorn.logging

from imagestudio.security.redact import redact

_PLAIN = (str, int, float, bool, type(None))


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, Mapping):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redacted(item) for item in value]
    text = repr(value)
    cleaned = redact(text)
    return value if cleaned == text else cleaned


def redact_secrets(
    _logger: Any, _method: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """A structlog processor: the event with every secret the process knows redacted."""
    return {key: _redacted(value) for key, value in event_dict.items()}


def configure_logging(*, json: bool = False, level: int = logging.INFO) -> None:
    """Console logs for people, JSON lines (``--log-json``) for machines."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.ExceptionRenderer(),  # a plain traceback string, no locals
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


class RedactingFormatter(uvicorn.logging.DefaultFormatter):
    """uvicorn's console format with the whole rendered line (a traceback included) passed
    through ``redact``: an exception that reaches uvicorn ("Exception in ASGI application")
    is logged by the standard library, not by structlog."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class RedactingAccessFormatter(uvicorn.logging.AccessFormatter):
    """uvicorn's access line (method, path and query), redacted."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's default logging config with the redacting formatters."""
    config: dict[str, Any] = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["formatters"]["default"]["()"] = f"{__name__}.RedactingFormatter"
    config["formatters"]["access"]["()"] = f"{__name__}.RedactingAccessFormatter"
    return config
