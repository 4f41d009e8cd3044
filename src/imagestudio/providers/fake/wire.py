"""Wire faults: answers that break the exchange or the answer's shape, as relays and
misbehaving providers do. Each is asked per call by a prompt trigger (or for every call by
``FakeProviderConfig.fault``, which holds the same text):

- ``[[json:truncated|html|b64-int|b64-list|b64-null|no-data|empty-data]]``: a 200 whose body is
  cut JSON, an HTML page, or JSON of the wrong shape (the image field an int, a list or null;
  ``data``/``choices`` missing or empty);
- ``[[drop:headers]]`` / ``[[drop:body]]``: the connection closed after the headers, or after
  half of the body (the request was read and "billed");
- ``[[redirect:CODE]]`` / ``[[redirect:CODE:HOST[:PORT]]]``: a 3xx to ``/redirected/<path>``
  on this server or on another host (``127.0.0.2``...); the redirected routes ignore it;
- ``[[url:self]]`` / ``[[url:404]]``: the image as a URL of the fake's ``/files/...``, or of a
  file that answers 404; ``[[url:at:HOST:PORT[:PATH]]]``: a URL on any host (a loopback
  canary, another server), ``http://HOST:PORT/PATH``;
- ``[[drip:N:T]]``: the body sent N bytes every T ms;
- ``[[big:N]]`` / ``[[big:N:chunked]]``: the image padded with N MB of zeros (a valid PNG
  start, an oversized answer), streamed as it is sent (the fake holds 64 KB of it, so a
  300 MB answer costs the fake nothing), with its ``content-length`` or chunked without one;
- ``[[http:CODE]]`` / ``[[http:CODE:SECONDS]]``: a gateway-style 5xx page, with
  ``retry-after: SECONDS`` when given;
- ``[[429:openai|ietf|epoch|bare[:SECONDS]]]``: a rate limit answered in that shape (see
  ``restyle_headers``).

The rate-limit shapes also apply to the limiter's own headers (``ratelimit_style``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from imagestudio.providers.fake.config import RATELIMIT_STYLES
from imagestudio.providers.fake.limits import format_duration, rate_limited
from imagestudio.providers.fake.reject import Reject, bad_request
from imagestudio.providers.retry_after import parse_duration

KINDS = ("json", "drop", "redirect", "url", "drip", "big", "http", "429")
JSON_SHAPES = ("truncated", "html", "b64-int", "b64-list", "b64-null", "no-data", "empty-data")
REDIRECTED = "/redirected"
_TRIGGER = re.compile(r"\[\[(" + "|".join(KINDS) + r"):([^\]]*)\]\]")
_HTML = "<html><head><title>{0}</title></head><body><h1>{0}</h1><hr>nginx</body></html>"
_REASONS = {502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


@dataclass(frozen=True, slots=True)
class WireFault:
    kind: str
    args: tuple[str, ...]

    def arg(self, index: int, default: str = "") -> str:
        return self.args[index] if len(self.args) > index and self.args[index] else default

    def number(self, index: int, default: float) -> float:
        try:
            value = float(self.arg(index, str(default)))
        except ValueError:
            raise bad_request(f"fault {self.kind}: {self.args!r} is not a number") from None
        return value


def find_fault(prompt: str, configured: str | None = None) -> WireFault | None:
    """The first wire-fault trigger in the prompt, else in the configured ``fault``."""
    for text in (prompt, configured or ""):
        match = _TRIGGER.search(text)
        if match:
            return WireFault(match.group(1), tuple(match.group(2).split(":")))
    return None


# ---------------------------------------------------------------- before the call is admitted


def early_answer(fault: WireFault | None, request: Request) -> Response | None:
    """A redirect or a differently shaped 429, answered before any limit or latency."""
    if fault is None:
        return None
    if fault.kind == "redirect" and not request.url.path.startswith(REDIRECTED):
        return _redirect(fault, request)
    if fault.kind == "429":
        wait = fault.number(1, 2.0)
        openai_headers = {
            "x-ratelimit-limit-requests": "60",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": format_duration(wait),
        }
        reject = rate_limited("Rate limit reached for requests", wait, openai_headers)
        return restyled_reject(reject, fault.arg(0, "openai"))
    return None


def _redirect(fault: WireFault, request: Request) -> Response:
    status = int(fault.number(0, 307))
    if status not in (301, 302, 303, 307, 308):
        raise bad_request(f"fault redirect: {status} is not a redirect status")
    host = fault.arg(1, request.url.hostname or "127.0.0.1")
    port = fault.arg(2, str(request.url.port or 80))
    location = f"{request.url.scheme}://{host}:{port}{REDIRECTED}{request.url.path}"
    return RedirectResponse(location, status_code=status)


def restyle_headers(headers: Mapping[str, str], style: str, now: float) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*-requests`` and ``retry-after(-ms)`` headers in another shape:

    - ``openai``: as they are;
    - ``ietf``: the IETF draft's ``ratelimit-limit``/``-remaining``/``-reset`` (seconds to
      wait), without ``retry-after``;
    - ``epoch``: ``x-ratelimit-limit``/``-remaining``/``-reset`` with the reset as a unix time
      in seconds, without ``retry-after``;
    - ``bare``: none at all.
    """
    if style == "openai":
        return dict(headers)
    others = {
        name: value
        for name, value in headers.items()
        if not name.startswith(("x-ratelimit-", "retry-after"))
    }
    if style == "bare" or "x-ratelimit-limit-requests" not in headers:
        return others
    reset = parse_duration(headers.get("x-ratelimit-reset-requests", "0")) or 0.0
    limit = headers["x-ratelimit-limit-requests"]
    remaining = headers.get("x-ratelimit-remaining-requests", "0")
    if style == "ietf":
        shaped = {"ratelimit-limit": limit, "ratelimit-remaining": remaining}
        shaped["ratelimit-reset"] = str(math.ceil(reset))
    else:
        shaped = {"x-ratelimit-limit": limit, "x-ratelimit-remaining": remaining}
        shaped["x-ratelimit-reset"] = str(math.ceil(now + reset))
    return others | shaped


def restyled_reject(reject: Reject, style: str) -> Response:
    """A 429 in ``style``; ``bare`` is a plain "Too Many Requests" without any header."""
    if style not in RATELIMIT_STYLES:
        raise bad_request(f"fault 429: unknown style {style!r}")
    if style == "bare":
        return PlainTextResponse("Too Many Requests", status_code=reject.status)
    reject.headers = restyle_headers(reject.headers, style, time.time())
    return reject.response()


# ---------------------------------------------------------------- the answer


def gateway_error(fault: WireFault) -> Response:
    """``[[http:CODE[:SECONDS]]]``: a relay's 5xx page, with ``retry-after`` when asked."""
    status = int(fault.number(0, 502))
    if not 500 <= status <= 599:
        raise bad_request(f"fault http: {status} is not a 5xx status")
    reason = _REASONS.get(status, "Server Error")
    headers = {"retry-after": fault.arg(1)} if fault.arg(1) else None
    html = _HTML.format(f"{status} {reason}")
    return Response(html, status_code=status, headers=headers, media_type="text/html")


def at_url(fault: WireFault) -> str:
    """``[[url:at:HOST:PORT[:PATH]]]``: where the answer says its image is."""
    host, port = fault.arg(1), fault.arg(2, "80")
    if not host or not port.isdigit():
        raise bad_request(f"fault url: {fault.args!r} is not at:HOST:PORT[:PATH]")
    return f"http://{host}:{port}/{fault.arg(3, 'image.png')}"


_BLOCK = b"A" * 65536  # base64 of 49,152 zero bytes


def big_answer(
    fault: WireFault, body: dict[str, Any], image: bytes, headers: Mapping[str, str]
) -> Response:
    """``[[big:N[:chunked]]]``: the answer with its image followed by N MB of zeros, streamed
    (the base64 of zeros is ``A``s) with a ``content-length`` unless ``chunked``."""
    original = base64.b64encode(image).decode()
    head, found, tail = json.dumps(body).partition(original)
    if not found:
        raise bad_request("fault big: the answer holds no image")
    image += bytes(-len(image) % 3)  # so the zeros' base64 follows on a group boundary
    extra = int(fault.number(0, 1.0) * 1024 * 1024)
    extra -= extra % 3
    prefix, zeros, suffix = head.encode() + base64.b64encode(image), extra // 3 * 4, tail.encode()

    async def chunks() -> AsyncIterator[bytes]:
        yield prefix
        for offset in range(0, zeros, len(_BLOCK)):
            yield _BLOCK[: min(len(_BLOCK), zeros - offset)]
        yield suffix

    sized = dict(headers)
    if fault.arg(1) != "chunked":
        sized["content-length"] = str(len(prefix) + zeros + len(suffix))
    return StreamingResponse(chunks(), headers=sized, media_type="application/json")


def with_url(body: dict[str, Any], url: str) -> dict[str, Any]:
    """The answer with its image given as ``url`` (an images or a chat answer)."""
    if "data" in body:
        body["data"] = [{"url": url}]
    else:
        message = body["choices"][0]["message"]
        message["images"] = [{"type": "image_url", "image_url": {"url": url}}]
    return body


def reshaped(body: dict[str, Any], shape: str) -> bytes | str:
    """``[[json:SHAPE]]``: the answer's body cut, as HTML, or of the wrong shape."""
    if shape not in JSON_SHAPES:
        raise bad_request(f"fault json: unknown shape {shape!r}")
    if shape == "truncated":
        text = json.dumps(body)
        return text[: len(text) // 2].encode()
    if shape == "html":
        return _HTML.format("Welcome to nginx!")
    listed = "data" if "data" in body else "choices"
    if shape == "no-data":
        body.pop(listed)
    elif shape == "empty-data":
        body[listed] = []
    else:
        wrong: Any = {"b64-int": 12345, "b64-list": ["iVBORw0KGgo="], "b64-null": None}[shape]
        if listed == "data":
            body["data"] = [{"b64_json": wrong}]
        else:
            message = body["choices"][0]["message"]
            message["images"] = [{"type": "image_url", "image_url": {"url": wrong}}]
    return json.dumps(body).encode()


def delivered(
    fault: WireFault | None,
    body: dict[str, Any],
    headers: Mapping[str, str],
    image: bytes | None = None,
) -> Response:
    """The answer as the fault delivers it: reshaped, dropped mid-way, drip-fed or padded."""
    kind = fault.kind if fault is not None else ""
    if fault is not None and kind == "big" and image is not None:
        return big_answer(fault, body, image, headers)
    content: bytes | str = json.dumps(body).encode()
    media_type = "application/json"
    if fault is not None and kind == "json":
        content = reshaped(body, fault.arg(0))
        media_type = "text/html" if isinstance(content, str) else media_type
    if fault is not None and kind == "drop":
        keep = len(content) // 2 if fault.arg(0) == "body" else 0
        return DroppedResponse(content, keep, dict(headers), media_type)
    if fault is not None and kind == "drip":
        chunk, every = int(fault.number(0, 1024)), fault.number(1, 100) / 1000.0
        return DripResponse(content, max(1, chunk), every, dict(headers), media_type)
    return Response(content, headers=dict(headers), media_type=media_type)


class DroppedResponse(Response):
    """Sends the headers (with the full ``content-length``) and ``keep`` bytes of the body,
    then returns unfinished: the server closes the connection mid-answer."""

    def __init__(
        self, content: bytes | str, keep: int, headers: dict[str, str], media_type: str
    ) -> None:
        super().__init__(content, headers=headers, media_type=media_type)
        self.keep = keep

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        del scope, receive
        start = {"type": "http.response.start", "status": self.status_code}
        await send(start | {"headers": self.raw_headers})
        if self.keep:
            part = self.body[: self.keep]
            await send({"type": "http.response.body", "body": part, "more_body": True})


class DripResponse(Response):
    """Sends the body ``chunk`` bytes every ``every`` seconds (stops if the client leaves)."""

    def __init__(
        self,
        content: bytes | str,
        chunk: int,
        every: float,
        headers: dict[str, str],
        media_type: str,
    ) -> None:
        super().__init__(content, headers=headers, media_type=media_type)
        self.chunk, self.every = chunk, every

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        del scope
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.ensure_future(watch())
        try:
            start = {"type": "http.response.start", "status": self.status_code}
            await send(start | {"headers": self.raw_headers})
            for offset in range(0, len(self.body), self.chunk):
                await asyncio.sleep(self.every)
                if gone.is_set():
                    return
                part = self.body[offset : offset + self.chunk]
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
