"""The ``imagestudio`` command: serve, worker, submit, demo, fake-provider, migrate."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import signal
from pathlib import Path
from typing import Annotated, Any

import structlog
import typer
import uvicorn
from rich.console import Console
from sqlalchemy.exc import SQLAlchemyError

from imagestudio.observability.logs import configure_logging, uvicorn_log_config
from imagestudio.settings import Settings

app = typer.Typer(
    name="imagestudio",
    help="Batch back end for AI product-image generation.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
log = structlog.get_logger("imagestudio.cli.main")

LogJson = Annotated[bool, typer.Option("--log-json", help="Log JSON lines instead of text.")]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[
        int | None,
        typer.Option(
            help="In-process task slots (default IMAGESTUDIO_WORKER_CONCURRENCY); 0: API only."
        ),
    ] = None,
    log_json: LogJson = False,
) -> None:
    """Run the HTTP API, with in-process workers unless --workers 0."""
    from imagestudio.api.app import create_app

    configure_logging(json=log_json)
    settings = Settings()
    if not settings.token_users() and not _is_loopback(host):
        raise typer.BadParameter(
            "local mode (no IMAGESTUDIO_API_TOKENS) listens on loopback only", param_hint="--host"
        )
    slots = settings.worker_concurrency if workers is None else workers
    uvicorn.run(
        create_app(settings, workers=slots),
        host=host,
        port=port,
        log_level="info",
        log_config=uvicorn_log_config(),
    )


@app.command()
def worker(
    concurrency: Annotated[
        int | None, typer.Option(help="Task slots (default IMAGESTUDIO_WORKER_CONCURRENCY).")
    ] = None,
    log_json: LogJson = False,
) -> None:
    """Run a worker process only (more machines share one PostgreSQL database)."""
    configure_logging(json=log_json)
    settings = Settings()
    asyncio.run(_run_worker(settings, concurrency or settings.worker_concurrency))


async def _run_worker(settings: Settings, concurrency: int) -> None:
    from imagestudio.runtime.services import open_services

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    delay = 1.0
    while not stop.is_set():
        try:
            async with open_services(settings) as services:
                await services.worker(concurrency).run(stop)
            return
        except (OSError, SQLAlchemyError) as exc:  # the database is down: wait, don't die
            log.warning(
                "worker cannot reach the database; retrying", error=str(exc)[:200], retry_in=delay
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 30.0)


@app.command()
def migrate() -> None:
    """Apply database migrations (alembic upgrade head)."""
    from imagestudio.store.db import migrate as run_migrations

    settings = Settings()
    run_migrations(settings.effective_database_url)
    console.print(f"migrated {_safe_url(settings.effective_database_url)}")


@app.command("fake-provider")
def fake_provider(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9100,
    rpm: Annotated[float | None, typer.Option(help="Requests per minute allowed.")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Concurrent calls allowed.")] = None,
    latency_ms: Annotated[float, typer.Option(help="Mean latency per call.")] = 1000.0,
    latency_dist: Annotated[
        str, typer.Option(help="fixed, uniform, lognormal or exponential.")
    ] = "fixed",
    error_rate: Annotated[float, typer.Option(help="Share of calls answering 500.")] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    render_size: Annotated[
        int | None,
        typer.Option(help="Draw images this many pixels on the longer side, whatever is asked."),
    ] = None,
) -> None:
    """Run the built-in OpenAI-compatible image server with limits and fault injection."""
    from imagestudio.providers.fake import FakeProviderConfig, run_fake_provider

    config = FakeProviderConfig(
        rpm=rpm,
        concurrency=concurrency,
        latency_ms=latency_ms,
        latency_dist=latency_dist,  # type: ignore[arg-type]
        error_rate=error_rate,
        seed=seed,
        render_size=render_size,
    )
    try:
        config.validate()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    console.print(f"fake provider on http://{host}:{port}/v1")
    run_fake_provider(host, port, config)


@app.command()
def submit(
    payload: Annotated[Path, typer.Argument(help="The job payload (JSON).", exists=True)],
    url: Annotated[str, typer.Option(help="The service.", envvar="IMAGESTUDIO_URL")] = (
        "http://127.0.0.1:8000"
    ),
    token: Annotated[
        str | None, typer.Option(help="Bearer token.", envvar="IMAGESTUDIO_TOKEN")
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", help="Show progress until it ends.")] = False,
) -> None:
    """Submit a job to a running service."""
    from imagestudio.cli.client import ApiClient, summary_table
    from imagestudio.cli.client import follow as follow_job

    body: dict[str, Any] = json.loads(payload.read_text(encoding="utf-8"))
    client = ApiClient(url, token)
    try:
        response = client.submit(body)
        if response.status_code not in (200, 201):
            console.print(f"[red]{response.status_code}[/red] {response.text}")
            raise typer.Exit(1)
        job = response.json()
        verb = "created" if response.status_code == 201 else "already exists"
        console.print(f"job {job['job_id']} {verb} ({job['counts']['total']} images)")
        if follow:
            job = follow_job(client, job["job_id"], console)
            console.print(summary_table(job, client.images(job["job_id"])))
            raise typer.Exit(0 if job["status"] == "succeeded" else 1)
    finally:
        client.close()


@app.command()
def demo(
    data_dir: Annotated[
        Path, typer.Option(help="Where the demo keeps its database and results.")
    ] = Path("imagestudio-demo"),
    latency_ms: Annotated[float, typer.Option(help="Fake provider mean latency.")] = 1500.0,
    workers: Annotated[int, typer.Option(help="In-process task slots.")] = 4,
) -> None:
    """Run the seed's example batch offline: fake provider, service, progress, results."""
    from imagestudio.cli.demo import run_demo

    configure_logging(level=30)
    code = run_demo(console, data_dir=data_dir, latency_ms=latency_ms, workers=workers)
    raise typer.Exit(code)


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def main() -> None:
    app()
