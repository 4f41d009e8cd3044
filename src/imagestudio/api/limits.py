"""Request limits as ASGI middleware: a body limit counted on the stream (413), and no NUL
character in the URL (400).

A declared ``Content-Length`` over the limit is refused before a byte of the body is read; a
body without one (chunked) is counted as it arrives, and the request is refused as soon as it
passes the limit, so at most the limit plus one chunk is ever held. Nothing is buffered here:
the application reads the body as before, through the counting ``receive``.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when the body passes the limit (the app's handlers answer it
    like any ``HTTPException``; the middleware answers it if it escapes them)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the limit of {limit} bytes")
        self.limit = limit


def _declared_length(scope: Scope) -> int | None:
    """The ``Content-Length`` header's value; -1 when it is not a plain number."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isascii() and text.isdigit() and len(text) < 20 else -1
    return None


def _answer(status: int, detail: str, field: str | None = None) -> tuple[Message, Message]:
    error = {413: "body_too_large"}.get(status, "bad_request")
    answer: dict[str, str] = {"detail": detail, "error": error}
    if field:
        answer["field"] = field
    body = json.dumps(answer)
    start: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ],
    }
    return start, {"type": "http.response.body", "body": body.encode()}


class BodyLimit:
    """``app`` with request bodies over ``max_bytes`` answered 413 (``Connection: close``)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and (declared < 0 or declared > self.max_bytes):
            problem = (
                (400, "the Content-Length header is not a number", "Content-Length")
                if declared < 0
                else (413, str(BodyTooLarge(self.max_bytes).detail))
            )
            for message in _answer(*problem):
                await send(message)
            return
        await self._counted(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLarge as exc:
            if started:
                raise
            for message in _answer(413, str(exc.detail)):
                await send(message)


class NulFreeUrl:
    """``app`` with a NUL character in the URL's path or query answered 400: no route takes
    one, and PostgreSQL's text cannot hold one (a job id ``a%00b`` was a 500 there)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            in_path = "\x00" in scope.get("path", "")
            if in_path or b"%00" in scope.get("query_string", b""):
                part = "path" if in_path else "query"
                for message in _answer(400, f"a NUL character in the URL's {part}", part):
                    await send(message)
                return
        await self.app(scope, receive, send)
