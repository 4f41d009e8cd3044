"""Log lines of failures: one line each with the error kind and cause; an unexpected error's
traceback once per place it is raised from; uvicorn's own lines redacted too."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import structlog

from imagestudio.observability.logs import RedactingFormatter, uvicorn_log_config
from imagestudio.runtime.services import Services
from imagestudio.security.redact import KNOWN

SECRET = "sk-hygiene-0123456789abcdef"


def _fail(n: int) -> None:
    raise ValueError(f"broken #{n}")


def _caught(n: int) -> ValueError:
    try:
        _fail(n)
    except ValueError as exc:
        return exc
    raise AssertionError("unreachable")


async def test_an_unexpected_errors_traceback_is_logged_once_per_place(
    services: Services,
) -> None:
    task = SimpleNamespace(job=SimpleNamespace(job_id="job-1"))
    with structlog.testing.capture_logs() as logs:
        for n in range(8):
            services.runner._report_unexpected(task, _caught(n))  # type: ignore[arg-type]
        try:
            {}["missing"]
        except KeyError as exc:
            services.runner._report_unexpected(task, exc)  # type: ignore[arg-type]
    assert len(logs) == 9
    with_traceback = [entry for entry in logs if entry.get("exc_info")]
    assert [entry["error_kind"] for entry in with_traceback] == ["ValueError", "KeyError"]
    assert [entry["cause"] for entry in logs[:3]] == ["broken #0", "broken #1", "broken #2"]
    assert all(entry["event"].endswith("(traceback logged before)") for entry in logs[1:8])


def test_uvicorns_lines_are_redacted() -> None:
    KNOWN.add(SECRET)
    formatter = RedactingFormatter("%(levelprefix)s %(message)s", use_colors=False)
    try:
        raise RuntimeError(f"boom with {SECRET} and http://u:pw@host/x")
    except RuntimeError as exc:
        record = logging.LogRecord(
            "uvicorn.error",
            logging.ERROR,
            __file__,
            1,
            "Exception in ASGI application",
            None,
            (type(exc), exc, exc.__traceback__),
        )
    line = formatter.format(record)
    assert "Traceback" in line
    assert SECRET not in line
    assert "u:pw" not in line


def test_the_serve_command_uses_the_redacting_formatters() -> None:
    config = uvicorn_log_config()
    assert config["formatters"]["default"]["()"].endswith("RedactingFormatter")
    assert config["formatters"]["access"]["()"].endswith("RedactingAccessFormatter")
