"""Signed, expiring result URLs (``security.signing.UrlSigner``)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from imagestudio.security.signing import UrlSigner

FILES = "/api/v1/image_studio/files"
URL = f"https://host{FILES}/job-7/0000-SKU1-stem1-a1.png"
KEY = "job-7/0000-SKU1-stem1-a1.png"


def signer(now: float = 1_000_000.0, secret: bytes = b"s" * 32) -> UrlSigner:
    return UrlSigner(secret, files_path=FILES, ttl_seconds=3600, clock=lambda: now)


def query(url: str) -> tuple[str, str]:
    values = parse_qs(urlsplit(url).query)
    return values["expires"][0], values["signature"][0]


def test_a_signed_url_verifies_until_it_expires() -> None:
    signed = signer().sign(URL)
    assert signed is not None
    assert signed.startswith(URL + "?expires=")
    expires, signature = query(signed)
    assert signer(now=1_000_000).verify(KEY, expires, signature)
    assert signer(now=int(expires) - 1).verify(KEY, expires, signature)
    assert not signer(now=int(expires) + 1).verify(KEY, expires, signature)


def test_expiry_is_rounded_so_answers_close_in_time_agree() -> None:
    assert signer(now=1_000_000).sign(URL) == signer(now=1_000_100).sign(URL)
    expires, _ = query(signer(now=1_000_000).sign(URL) or "")
    assert 3600 <= int(expires) - 1_000_000 <= 3600 + 900


@pytest.mark.parametrize(
    ("key", "expires_delta", "signature", "secret"),
    [
        ("job-7/other.png", 0, None, b"s" * 32),
        (KEY, 900, None, b"s" * 32),
        (KEY, 0, "0" * 32, b"s" * 32),
        (KEY, 0, None, b"t" * 32),
    ],
)
def test_tampering_fails(
    key: str, expires_delta: int, signature: str | None, secret: bytes
) -> None:
    expires, good = query(signer().sign(URL) or "")
    later = str(int(expires) + expires_delta)
    assert not signer(secret=secret).verify(key, later, signature or good)


@pytest.mark.parametrize(
    ("expires", "signature"),
    [
        (None, "x"),
        ("1", None),
        ("", ""),
        ("-5", "x"),
        ("\uff11\uff12", "x"),
        ("9" * 40, "x"),
        ("1e9", "x"),
    ],
)
def test_malformed_queries_fail(expires: str | None, signature: str | None) -> None:
    assert not signer().verify(KEY, expires, signature)


@pytest.mark.parametrize(
    "url", [None, "", "https://bucket.example/job-7/a.png", f"https://host{FILES}/k?x=1"]
)
def test_other_urls_are_left_alone(url: str | None) -> None:
    assert signer().sign(url) == url
