"""The dashboard in Debian's Chromium (Playwright) against a real ``imagestudio serve``
subprocess with the fake provider as another subprocess, on SQLite and on PostgreSQL.

One service per database for the module (tokens for two users, alice and bob); each test
gets a fresh browser context. Screenshots go to ``docs/img/`` from the SQLite run.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page

from imagestudio.domain import API_PREFIX, TERMINAL_JOB_STATUSES
from testkit import pg
from testkit.browser import chromium, chromium_missing
from testkit.fleet import fake_provider_process
from testkit.payloads import batch_payload
from testkit.serve import serve_process

IN_CI = os.environ.get("CI", "").lower() == "true"
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
TOKENS = {"alice": "alice-token-0123", "bob": "bob-token-4567"}
KEY = "sk-browser-test-0123456789"


@dataclass
class Service:
    url: str
    provider: str
    backend: str

    def client(self, user: str = "alice") -> httpx.Client:
        headers = {"Authorization": f"Bearer {TOKENS[user]}"}
        return httpx.Client(base_url=f"{self.url}{API_PREFIX}", headers=headers, timeout=30)

    def submit(self, user: str = "alice", **kw: Any) -> str:
        job_id = kw.pop("job_id", None) or f"job-{uuid.uuid4().hex[:6]}"
        kw.setdefault("size", 256)
        payload = batch_payload(self.provider, job_id, api_key=KEY, user_id=user, **kw)
        with self.client(user) as c:
            answer = c.post("/jobs", json=payload)
            assert answer.status_code == 201, answer.text
        return job_id

    def job(self, job_id: str, user: str = "alice") -> dict[str, Any]:
        with self.client(user) as c:
            found: dict[str, Any] = c.get(f"/jobs/{job_id}").raise_for_status().json()
            return found

    def wait_ended(self, job_id: str, timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in TERMINAL_JOB_STATUSES:
                return job
            assert time.monotonic() < deadline, f"job {job_id} did not end: {job['status']}"
            time.sleep(0.3)

    def cancel(self, job_id: str) -> None:
        with self.client() as c:
            c.post(f"/jobs/{job_id}/cancel")


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    problem = chromium_missing()
    if problem is not None:
        if IN_CI:
            pytest.fail(problem)
        pytest.skip(problem)
    workdir = tmp_path_factory.mktemp(f"dash-{request.param}")
    name = None
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{workdir / 'dash.db'}"
    else:
        template: str = request.getfixturevalue("pg_template")
        name = f"imagestudio_dash_{uuid.uuid4().hex[:10]}"
        url = pg.create(name, template=template)
    tokens = ",".join(f"{t}={u}" for u, t in TOKENS.items())
    options = ("--latency-ms", "500", "--latency-dist", "uniform", "--render-size", "128")
    try:
        with (
            fake_provider_process(workdir, *options) as (provider, _),
            serve_process(
                workdir,
                workers=8,
                database_url=url,
                allow_private_urls="127.0.0.1",
                api_tokens=tokens,
            ) as served,
        ):
            yield Service(served.url, provider, request.param)
    finally:
        if name is not None:
            pg.drop(name)


@pytest.fixture(scope="module")
def browser(service: Service) -> Iterator[Browser]:
    with chromium() as found:
        yield found


@pytest.fixture
def page(browser: Browser, service: Service) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield opened
    finally:
        context.close()
    assert not errors, f"the page threw: {errors}"


def sign_in(page: Page, service: Service, user: str = "alice", hash_: str = "#/jobs") -> None:
    page.goto(f"{service.url}/{hash_}")
    page.get_by_label("API token").fill(TOKENS[user])
    page.get_by_role("button", name="Use token").click()


@pytest.fixture
def shoot(service: Service) -> Callable[[Page, str], None]:
    """Write a screenshot to docs/img/<name>.png (from the SQLite run only)."""

    def take(page: Page, name: str) -> None:
        if service.backend == "sqlite":
            DOCS_IMG.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(DOCS_IMG / f"{name}.png"), full_page=True)

    return take
