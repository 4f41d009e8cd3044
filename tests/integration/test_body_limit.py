"""The request body limit on a real ``imagestudio serve`` process: 413 before the body is
held, whether it declares its length or streams it chunked, and the server's memory stays
flat (RSS peak growth under 100 MB for a 50 MB body)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from imagestudio.domain import API_PREFIX
from testkit.serve import ServeProcess, serve_process

MB = 1024 * 1024
LIMIT = 1 * MB


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with serve_process(tmp_path_factory.mktemp("body"), max_body_bytes=str(LIMIT)) as served:
        yield served


def post_raw(url: str, head: bytes, chunks: Iterator[bytes]) -> bytes:
    """Send ``head`` then ``chunks`` until the server stops reading; return its answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head)
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        try:
            while data := sock.recv(65536):
                answer += data
        except ConnectionResetError:
            pass
        return answer


def _head(length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST {API_PREFIX}/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n\r\n"
    ).encode()


def _chunked(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    for _ in range(total // size):
        yield f"{size:x}\r\n".encode() + b" " * size + b"\r\n"
    yield b"0\r\n\r\n"


def _plain(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    for _ in range(total // size):
        yield b" " * size


def test_a_declared_length_over_the_limit_is_413_at_once(server: ServeProcess) -> None:
    response = httpx.post(
        f"{server.url}{API_PREFIX}/jobs",
        content=b"{" + b" " * LIMIT + b"}",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"
    assert str(LIMIT) in response.json()["detail"]


def test_a_body_just_under_the_limit_reaches_validation(server: ServeProcess) -> None:
    body = b'{"mode": "nope", "options": {}}' + b" " * (LIMIT - 100)
    response = httpx.post(
        f"{server.url}{API_PREFIX}/jobs", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "mode"


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_a_50_mb_body_is_refused_with_flat_memory(server: ServeProcess, framing: str) -> None:
    size = 50 * MB
    rss_before, _ = server.memory()
    if framing == "chunked":
        answer = post_raw(server.url, _head(None), _chunked(size))
    else:
        answer = post_raw(server.url, _head(size), _plain(size))
    _, peak_after = server.memory()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert peak_after - rss_before < 100 * MB
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_a_bad_content_length_is_400(server: ServeProcess) -> None:
    head = (f"POST {API_PREFIX}/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 1e3\r\n\r\n").encode()
    answer = post_raw(server.url, head, iter([b"{}"]))
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
