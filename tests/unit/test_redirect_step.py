"""The guarded path's redirect rule as a table (``security.http.redirect_step``, pure)."""

from __future__ import annotations

import pytest

from imagestudio.security.http import Hop, redirect_step

A = "http://a.example:8080/v1/images/edits"


@pytest.mark.parametrize(
    ("method", "status", "location", "body", "expected"),
    [
        # GET follows every redirect status; credentials stay with the same origin only.
        ("GET", 302, "/b.png", False, Hop("http://a.example:8080/b.png", "GET", False, True)),
        ("GET", 301, "http://b.example/x", False, Hop("http://b.example/x", "GET", False, False)),
        (
            "GET",
            303,
            "https://a.example:8080/",
            False,
            Hop("https://a.example:8080/", "GET", False, False),
        ),
        (
            "GET",
            307,
            "http://a.example:9090/x",
            False,
            Hop("http://a.example:9090/x", "GET", False, False),
        ),
        ("HEAD", 308, "x", False, Hop("http://a.example:8080/v1/images/x", "HEAD", False, True)),
        # A body goes again only on a 307/308 to the same origin.
        ("POST", 307, "/v2/edits", True, Hop("http://a.example:8080/v2/edits", "POST", True, True)),
        ("POST", 308, "/v2/edits", True, Hop("http://a.example:8080/v2/edits", "POST", True, True)),
        ("POST", 307, "http://127.0.0.1/steal", True, None),
        ("POST", 308, "http://a.example:8081/v1", True, None),  # another port: another origin
        ("POST", 307, "https://a.example:8080/v1", True, None),  # another scheme
        ("POST", 302, "/v2/edits", True, None),  # never silently turned into a GET
        ("POST", 303, "/v2/edits", True, None),
        ("POST", 301, "/v2/edits", True, None),
        (
            "POST",
            307,
            "/v2/edits",
            False,
            Hop("http://a.example:8080/v2/edits", "POST", True, True),
        ),
        # Not a redirect, or nowhere to go.
        ("GET", 200, "/b.png", False, None),
        ("GET", 304, "/b.png", False, None),
        ("GET", 302, "http://[::1", False, None),
    ],
)
def test_redirect_step(
    method: str, status: int, location: str, body: bool, expected: Hop | None
) -> None:
    assert redirect_step(method, status, A, location, body=body) == expected
