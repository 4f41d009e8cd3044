"""With API tokens set, result files are served only to the owner's token or to the signed,
expiring URLs the answers carry; local mode stays open (``test_files_route``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import structlog
from conftest import make_settings

from imagestudio.api.app import create_app
from imagestudio.cli.background_server import BackgroundServer
from imagestudio.domain import API_PREFIX, FILES_PATH, TERMINAL_JOB_STATUSES
from imagestudio.security.crypto import SecretBox, load_or_create_key
from imagestudio.security.signing import UrlSigner
from testkit.payloads import batch_payload

ALICE, BOB = "tok-alice-0123456789", "tok-bob-0123456789"


@pytest.fixture
def done(
    tmp_path: Path, db_url: str, fake_provider: BackgroundServer
) -> Iterator[tuple[str, dict]]:
    """A server in token mode and Alice's finished job: ``(server url, job answer)``."""
    structlog.reset_defaults()
    settings = make_settings(
        tmp_path, db_url, api_tokens=f"{ALICE}=alice,{BOB}=bob", imaging_processes=0
    )
    with BackgroundServer(create_app(settings, workers=2)) as server:
        alice = {"Authorization": f"Bearer {ALICE}"}
        api = f"{server.url}{API_PREFIX}"
        raw = batch_payload(fake_provider.url, "job-1", user_id="alice", size=128)
        assert httpx.post(f"{api}/jobs", json=raw, headers=alice).status_code == 201
        deadline = time.monotonic() + 60
        while (job := httpx.get(f"{api}/jobs/job-1", headers=alice).json())[
            "status"
        ] not in TERMINAL_JOB_STATUSES:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert job["status"] == "succeeded", job
        yield server.url, job


def test_answers_carry_signed_urls_that_need_no_token(done: tuple[str, dict]) -> None:
    url, job = done
    assert len(job["result_image_urls"]) == 5
    for result in job["result_image_urls"]:
        assert "expires=" in result
        assert "signature=" in result
        answer = httpx.get(f"{url}{result}")
        assert answer.status_code == 200, answer.text
        assert answer.content[:8] == b"\x89PNG\r\n\x1a\n"
    images = httpx.get(
        f"{url}{API_PREFIX}/jobs/job-1/images", headers={"Authorization": f"Bearer {ALICE}"}
    ).json()["images"]
    assert all("signature=" in image["result_url"] for image in images)


def test_unsigned_urls_need_the_owners_token(done: tuple[str, dict]) -> None:
    url, job = done
    plain = job["result_image_urls"][0].split("?", 1)[0]
    assert httpx.get(f"{url}{plain}").status_code == 401
    assert httpx.get(f"{url}{plain}", headers={"Authorization": "Bearer nope"}).status_code == 401
    owner = httpx.get(f"{url}{plain}", headers={"Authorization": f"Bearer {ALICE}"})
    assert owner.status_code == 200
    other = httpx.get(f"{url}{plain}", headers={"Authorization": f"Bearer {BOB}"})
    assert other.status_code == 404
    missing = httpx.get(
        f"{url}{FILES_PATH}/no-such-job/x.png", headers={"Authorization": f"Bearer {BOB}"}
    )
    assert missing.status_code == 404


def test_tampered_and_expired_signatures_are_refused(
    done: tuple[str, dict], tmp_path: Path
) -> None:
    url, job = done
    signed = job["result_image_urls"][0]
    plain, query = signed.split("?", 1)
    values = parse_qs(query)
    expires, signature = values["expires"][0], values["signature"][0]
    other_key = job["result_image_urls"][1].split("?", 1)[0]
    assert httpx.get(f"{url}{other_key}?expires={expires}&signature={signature}").status_code == 401
    later = int(expires) + 3600
    assert httpx.get(f"{url}{plain}?expires={later}&signature={signature}").status_code == 401
    box = SecretBox(load_or_create_key(None, tmp_path / "data"))
    past = UrlSigner(
        box.derive("result-urls"),
        files_path=FILES_PATH,
        ttl_seconds=3600,
        clock=lambda: time.time() - 4 * 3600,
    )
    expired = past.sign(plain) or ""
    assert urlsplit(expired).query
    assert httpx.get(f"{url}{expired}").status_code == 401
    fresh = UrlSigner(box.derive("result-urls"), files_path=FILES_PATH, ttl_seconds=3600)
    assert httpx.get(f"{url}{fresh.sign(plain)}").status_code == 200
