"""``python -m bench.body_limit``: what a 50 MB request body costs the server, with the body
limit (16 MiB, the default) and without it (a limit of 1 TB), side by side in one run.

A real ``imagestudio serve`` process; the body is sent declared (Content-Length) and chunked;
the figure is the server's peak RSS (VmHWM) after the request minus its RSS before it.
"""

from __future__ import annotations

import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from imagestudio.domain import API_PREFIX
from testkit.serve import serve_process

MB = 1024 * 1024
SIZE = 50 * MB
CHUNK = 64 * 1024


def _send(url: str, chunked: bool) -> tuple[str, float]:
    host, port = url.removeprefix("http://").split(":")
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {SIZE}"
    head = (
        f"POST {API_PREFIX}/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"{framing}\r\n\r\n"
    ).encode()
    body: Iterator[bytes] = (
        (f"{CHUNK:x}\r\n".encode() + b" " * CHUNK + b"\r\n") if chunked else b" " * CHUNK
        for _ in range(SIZE // CHUNK)
    )
    start = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=120) as sock:
        sock.sendall(head)
        try:
            for piece in body:
                sock.sendall(piece)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass
        try:
            answer = sock.recv(200)
        except OSError:
            answer = b"(reset)"
    return answer.split(b"\r\n", 1)[0].decode(errors="replace"), time.perf_counter() - start


def main() -> None:
    rows = []
    for label, limit in (
        ("limit 16 MiB (default)", str(16 * MB)),
        ("no limit (1 TB)", str(10**12)),
    ):
        for chunked in (False, True):
            with (
                tempfile.TemporaryDirectory() as tmp,
                serve_process(Path(tmp), max_body_bytes=limit) as server,
            ):
                before, _ = server.memory()
                status, seconds = _send(server.url, chunked)
                _, peak = server.memory()
            framing = "chunked" if chunked else "Content-Length"
            rows.append((label, framing, status, (peak - before) / MB, seconds))
    print("| limit | framing | answer | server RSS peak growth | time |")
    print("|---|---|---|---|---|")
    for label, framing, status, growth, seconds in rows:
        print(f"| {label} | {framing} | {status} | {growth:.1f} MB | {seconds:.2f} s |")


if __name__ == "__main__":
    main()
