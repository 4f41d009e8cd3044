"""A canary: a TCP server on a loopback address that counts every connection made to it.

SSRF tests point hostile URLs at it and assert it saw 0 connections. It answers each
connection with an empty ``200`` (so a client that did connect does not hang) and keeps the
first bytes it received, to show what was sent (a re-POSTed form, an API key).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType


class Canary:
    """``with Canary("127.0.0.1") as canary: ...; assert canary.connections == 0``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(64)
        self._sock.settimeout(0.1)
        self.port: int = self._sock.getsockname()[1]
        self.connections = 0
        self.received: list[bytes] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def reset(self) -> None:
        with self._lock:
            self.connections = 0
            self.received.clear()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
            self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(0.5)
            try:
                data = conn.recv(4096)
                with self._lock:
                    self.received.append(data)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass

    def __enter__(self) -> Canary:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


def shared_port(first: str, second: str, attempts: int = 50) -> int:
    """A port free on both ``first`` and ``second`` (a name that rebinds from one to the other
    must find a server at the same port on each)."""
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as a:
            a.bind((first, 0))
            port: int = a.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as b:
                try:
                    b.bind((second, port))
                except OSError:
                    continue
            return port
    raise RuntimeError(f"no port free on both {first} and {second}")


class ScriptedResolver:
    """A resolver the test controls: each listed name answers its scripted addresses in turn
    (the last answer repeats), every other name goes to ``fallback``. ``calls`` logs every
    lookup, so a test sees how often the guarded path resolved."""

    def __init__(
        self,
        script: dict[str, list[list[str]]],
        fallback: Callable[[str, int], Awaitable[Sequence[str]]],
    ) -> None:
        self._script = {name: list(answers) for name, answers in script.items()}
        self._fallback = fallback
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append(host)
        answers = self._script.get(host)
        if answers is None:
            return await self._fallback(host, port)
        return answers.pop(0) if len(answers) > 1 else answers[0]
