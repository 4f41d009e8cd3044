"""A webhook receiver for the tests: a real ASGI app on loopback that verifies every request's
Standard Webhooks signature with the ``standardwebhooks`` library, answers 500 to its first
``fail_first`` tries, can hold one try open (a sender killed mid-delivery), and keeps what it
received, deduplicated by ``webhook-id`` as a receiver should."""

from __future__ import annotations

import asyncio
import base64
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    msg_id: str
    type: str
    body: dict[str, Any]


@dataclass
class WebhookReceiver:
    """``fail_first`` tries answer 500; the try numbered ``hold_try`` (1-based, counting
    every request) is recorded as received, then held open ``hold_seconds`` before its
    answer, as a receiver that processed a message whose sender died before the answer."""

    secret: str
    fail_first: int = 3
    hold_try: int | None = None
    hold_seconds: float = 60.0
    tries: int = 0
    bad_signatures: int = 0
    statuses: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    held: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def unique(self) -> dict[str, Received]:
        """What the receiver acted on: the first message of each ``webhook-id``."""
        seen: dict[str, Received] = {}
        for message in self.received:
            seen.setdefault(message.msg_id, message)
        return seen

    def types(self) -> Counter[str]:
        return Counter(m.type for m in self.unique.values())

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                kind = (await receive())["type"]
                await send({"type": f"{kind}.complete"})
                if kind == "lifespan.shutdown":
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        status = await self._handle(body, headers)
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def _handle(self, body: bytes, headers: dict[str, str]) -> int:
        try:
            parsed = Webhook(self.secret).verify(body, headers)
        except WebhookVerificationError:
            with self._lock:
                self.bad_signatures += 1
            return 401
        with self._lock:
            self.tries += 1
            number = self.tries
            if number <= self.fail_first:
                self.statuses.append(500)
                return 500
            self.received.append(Received(headers["webhook-id"], parsed["type"], parsed))
        if number == self.hold_try:
            self.held.set()
            await asyncio.sleep(self.hold_seconds)
        with self._lock:
            self.statuses.append(200)
        return 200


def whsec(seed: int = 7) -> str:
    """A valid ``whsec_`` secret (deterministic for tests)."""
    return "whsec_" + base64.b64encode(bytes((seed + i) % 256 for i in range(32))).decode()
