"""Secrets out of every log line and error text, in the forms providers echo them in."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote_plus

import pytest
import structlog

from imagestudio.observability.logs import configure_logging
from imagestudio.providers.error_map import scrub
from imagestudio.security.redact import (
    KNOWN,
    REDACTED,
    SecretRegister,
    forms,
    redact,
    strip_userinfo,
)

CANARY = "sk-canary-7f3a9c1e5b2d4f60aa"


def encodings(secret: str) -> dict[str, str]:
    """How a provider or gateway might echo ``secret`` back."""
    return {
        "plain": secret,
        "base64": base64.b64encode(secret.encode()).decode(),
        "base64 url-safe unpadded": base64.urlsafe_b64encode(secret.encode()).decode().rstrip("="),
        "basic auth": base64.b64encode(f"user:{secret}".encode()).decode(),
        "basic auth, longer user": base64.b64encode(f"admin:{secret}".encode()).decode(),
        "inside a longer base64 text": base64.b64encode(f"ab{secret}cd".encode()).decode(),
        "url-encoded": quote_plus(secret + "/x"),
        "query string": f"https://relay.example/v1?key={quote_plus(secret)}&x=1",
    }


def leaked(text: str, secret: str = CANARY) -> list[str]:
    """Which recoverable forms of ``secret`` remain in ``text`` (a form must be long enough
    to give the secret away: the whole key, or 16+ characters of its encoding)."""
    found = [name for name, form in encodings(secret).items() if form in text]
    b64 = base64.b64encode(secret.encode()).decode()
    found += [
        f"base64 run {b64[i : i + 16]}" for i in range(len(b64) - 16) if b64[i : i + 16] in text
    ]
    return found


@pytest.mark.parametrize(("how", "text"), list(encodings(CANARY).items()))
def test_every_echoed_form_is_redacted(how: str, text: str) -> None:
    cleaned = redact(f"provider said: {text} (request 42)", [CANARY])
    assert REDACTED in cleaned, how
    assert leaked(cleaned) == [], how
    assert cleaned.startswith("provider said: ")
    assert cleaned.endswith("(request 42)")


def test_scrub_covers_encoded_keys_too() -> None:
    echoed = base64.b64encode(f"user:{CANARY}".encode()).decode()
    assert leaked(scrub(f"401 from gateway: Basic {echoed}", [CANARY])) == []


def test_known_secrets_are_redacted_without_being_passed() -> None:
    register = SecretRegister()
    register.add("short")  # too short to redact safely: ignored
    assert register.forms == ()
    register.add(CANARY)
    assert CANARY in register.forms
    assert all(len(form) >= 8 for form in register.forms)
    assert forms(CANARY) == set(register.forms)


def test_plain_text_is_left_alone() -> None:
    text = "Processing image 3/5 for SKU-1234 (stem main_front), 1536x1536 png"
    assert redact(text, [CANARY]) == text


def _boom(config: dict[str, str]) -> None:
    api_key = config["api_key"]  # a local the rich renderer would print
    raise RuntimeError("gateway echoed " + base64.b64encode(api_key.encode()).decode())


@pytest.mark.parametrize("as_json", [False, True])
def test_log_lines_and_tracebacks_carry_no_known_key(
    as_json: bool, capfd: pytest.CaptureFixture[str]
) -> None:
    KNOWN.add(CANARY)
    capfd.readouterr()
    configure_logging(json=as_json)
    try:
        log = structlog.get_logger("test")
        try:
            _boom({"api_key": CANARY, "prompt": "p"})
        except RuntimeError:
            log.exception("task crashed", url=f"https://x/?key={quote_plus(CANARY)}")
        log.info("echo", detail={"nested": [CANARY]}, header=f"Bearer {CANARY}")
    finally:
        structlog.reset_defaults()
    err = capfd.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert "RuntimeError: gateway echoed" in err
    assert "config = " not in err  # no frame's locals are printed
    assert leaked(err) == []
    if as_json:
        lines = [json.loads(line) for line in err.strip().splitlines()]
        assert [line["event"] for line in lines] == ["task crashed", "echo"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://u:sk-abc123456789@host/v1", "http://[REDACTED]@host/v1"),
        ("GET https://:pw@h:8/x failed", "GET https://[REDACTED]@h:8/x failed"),
        ("see http://host/a@b", "see http://host/a@b"),
        ("mail admin@example.com at http://host/", "mail admin@example.com at http://host/"),
        ("two http://a:b@x and https://c@y/", "two http://[REDACTED]@x and https://[REDACTED]@y/"),
    ],
)
def test_url_credentials_are_redacted(text: str, expected: str) -> None:
    assert strip_userinfo(text) == expected
    assert redact(text) == expected
