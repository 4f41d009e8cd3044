"""The project's own OpenAI-compatible image server, with enforced limits and fault injection.

``create_fake_provider_app(FakeProviderConfig(...))`` builds a Starlette app that answers like
OpenAI (and OpenRouter for chat) closely enough for the official SDK:

- ``POST /v1/images/edits`` (multipart), ``POST /v1/images/generations`` (JSON),
  ``POST /v1/chat/completions`` (image in, ``message.images`` out).
- ``Authorization: Bearer <key>``. Key triggers: ``bad`` -> 401 ``invalid_api_key`` (the message
  echoes the key, as some compatible gateways do, so tests prove adapters scrub it);
  ``noquota`` -> 429 ``insufficient_quota``. Prompt triggers: ``[[refuse]]`` -> 400
  ``moderation_blocked``; ``[[noimage]]`` -> 200 without an image; ``[[slow]]`` -> 10x latency.
- Limits: ``concurrency`` (requests in flight) and ``rpm`` (GCRA: ``rpm`` per 60 s, bursts of
  ``rpm_burst``, by default one second's worth) answer 429 ``rate_limit_exceeded`` with
  ``retry-after``, ``retry-after-ms`` and ``x-ratelimit-*`` headers. ``error_rate`` of the
  admitted requests answer 500 ``server_error`` after their latency.
- ``GET /_fake/stats``, ``POST /_fake/reset``, ``POST /_fake/config`` for tests and benchmarks;
  ``GET /samples/{n}.jpg`` serves generated source photos; ``GET /files/{id}.png`` serves the
  images of ``response_format=url`` answers (dall-e models only).

All state lives in one ``FakeState`` per app; it is only touched from the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import io
import itertools
import math
import random
import re
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imagestudio.providers.fake.samples import load_font, sample_product_photo

LatencyDist = Literal["fixed", "uniform", "lognormal", "exponential"]
LATENCY_DISTS: tuple[str, ...] = ("fixed", "uniform", "lognormal", "exponential")
UNLIMITED = 10_000  # what the x-ratelimit-* headers report when no limit is configured
_LOGNORMAL_SIGMA = 0.5
_MAX_FILES = 256
_ORG = "org-fake"


# ---------------------------------------------------------------------------- configuration


@dataclass(slots=True)
class FakeProviderConfig:
    """Limits and faults of a fake provider. ``latency_ms`` is the mean of ``latency_dist``."""

    rpm: float | None = None
    concurrency: int | None = None
    latency_ms: float = 1000.0
    latency_dist: LatencyDist = "fixed"
    error_rate: float = 0.0
    seed: int | None = None
    rpm_burst: int | None = None
    max_log: int = 100_000
    ratelimit_headers: bool = True  # False: a provider that reports no x-ratelimit-* headers

    def validate(self) -> FakeProviderConfig:
        """Return self, or raise ``ValueError`` naming the bad field."""
        if self.rpm is not None and not self.rpm > 0:
            raise ValueError("rpm must be > 0 or None")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("concurrency must be >= 1 or None")
        if self.latency_ms < 0 or not math.isfinite(self.latency_ms):
            raise ValueError("latency_ms must be >= 0")
        if self.latency_dist not in LATENCY_DISTS:
            raise ValueError(f"latency_dist must be one of {', '.join(LATENCY_DISTS)}")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be between 0 and 1")
        if self.rpm_burst is not None and self.rpm_burst < 1:
            raise ValueError("rpm_burst must be >= 1 or None")
        return self

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------- pure helpers


def sample_latency(rng: random.Random, mean_ms: float, dist: str) -> float:
    """One latency in seconds drawn from ``dist`` with mean ``mean_ms``."""
    if mean_ms <= 0:
        return 0.0
    if dist == "uniform":
        millis = rng.uniform(0.5 * mean_ms, 1.5 * mean_ms)
    elif dist == "lognormal":
        mu = math.log(mean_ms) - _LOGNORMAL_SIGMA**2 / 2
        millis = rng.lognormvariate(mu, _LOGNORMAL_SIGMA)
    elif dist == "exponential":
        millis = rng.expovariate(1.0 / mean_ms)
    else:
        millis = mean_ms
    return millis / 1000.0


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: ``250ms``, ``1s``, ``1.5s``, ``6m0s``, ``1h2m3s``."""
    seconds = max(0.0, seconds)
    if seconds < 1.0:
        return f"{math.ceil(seconds * 1000)}ms"
    hours, rest = divmod(seconds, 3600.0)
    minutes, secs = divmod(rest, 60.0)
    text = f"{round(secs, 3):g}s"
    if hours >= 1:
        return f"{int(hours)}h{int(minutes)}m{text}"
    if minutes >= 1:
        return f"{int(minutes)}m{text}"
    return text


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``"1024x1536"`` -> (1024, 1536); ``auto``/None -> 1024x1024; anything odd -> None."""
    if text is None or text in ("", "auto"):
        return (1024, 1024)
    match = re.fullmatch(r"(\d{1,5})x(\d{1,5})", text.strip())
    if match is None:
        return None
    width, height = int(match.group(1)), int(match.group(2))
    if not (16 <= width <= 4096 and 16 <= height <= 4096):
        return None
    return (width, height)


def key_fingerprint(key: str | None) -> str | None:
    return hashlib.sha256(key.encode()).hexdigest()[:12] if key else None


class Gcra:
    """Generic cell rate algorithm: ``rpm`` requests per minute, bursts of ``burst``.

    Pure: every method takes ``now`` (monotonic seconds).
    """

    def __init__(self, rpm: float, burst: int) -> None:
        self.rpm = rpm
        self.burst = burst
        self.interval = 60.0 / rpm
        self.tolerance = (burst - 1) * self.interval
        self._tat = 0.0

    def acquire(self, now: float) -> float:
        """0.0 if a request may go now (and count it), else the seconds until one may."""
        tat = max(self._tat, now)
        wait = tat - self.tolerance - now
        if wait > 1e-9:
            return wait
        self._tat = tat + self.interval
        return 0.0

    def remaining(self, now: float) -> int:
        backlog = max(0.0, self._tat - now)
        return max(
            0,
            min(
                self.burst,
                math.floor((self.tolerance + self.interval - backlog) / self.interval + 1e-9),
            ),
        )

    def reset_after(self, now: float) -> float:
        return max(0.0, self._tat - now)


def default_burst(rpm: float) -> int:
    """One second's worth of requests, at least one (OpenAI enforces limits in short slices)."""
    return max(1, math.ceil(rpm / 60.0))


# ---------------------------------------------------------------------------- images (pure)


def _tint(prompt: str) -> tuple[int, int, int]:
    digest = hashlib.sha256(prompt.encode()).digest()
    return (digest[0] // 2 + 64, digest[1] // 2 + 64, digest[2] // 2 + 64)


def _encode(image: Image.Image, output_format: str) -> bytes:
    out = io.BytesIO()
    if output_format in ("jpeg", "jpg"):
        image.convert("RGB").save(out, format="JPEG", quality=90)
    elif output_format == "webp":
        image.save(out, format="WEBP", quality=85)
    else:
        image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _stamp(image: Image.Image, prompt: str, colour: tuple[int, int, int]) -> None:
    """A frame in the prompt's colour and the start of the prompt on a dark band."""
    width, height = image.size
    draw = ImageDraw.Draw(image)
    border = max(3, min(width, height) // 40)
    draw.rectangle((0, 0, width - 1, height - 1), outline=colour, width=border)
    band = max(14, height // 14)
    draw.rectangle(
        (border, height - border - band, width - border, height - border), fill=(20, 20, 28)
    )
    text = prompt.strip().replace("\n", " ")
    text = text if len(text) <= 48 else text[:47] + "…"
    draw.text(
        (border + band // 3, height - border - band // 2),
        text,
        font=load_font(band * 3 // 5),
        fill=(255, 255, 255),
        anchor="lm",
    )


def render_edit(source: bytes, prompt: str, size: tuple[int, int], output_format: str) -> bytes:
    """The source, cropped to ``size``, posterized, tinted, framed and stamped with the prompt."""
    with Image.open(io.BytesIO(source)) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    image = ImageOps.fit(image, size, Image.Resampling.BILINEAR)
    colour = _tint(prompt)
    image = Image.blend(ImageOps.posterize(image, 3), Image.new("RGB", size, colour), 0.25)
    _stamp(image, prompt, colour)
    return _encode(image, output_format)


def render_generation(prompt: str, size: tuple[int, int], output_format: str) -> bytes:
    """An image "generated" from the prompt: a sample photo chosen by it, stylized."""
    index = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big")
    source = sample_product_photo(index, "generated", size)
    return render_edit(source, prompt, size, output_format)


def chat_size(source: bytes, long_side: int = 1024) -> tuple[int, int]:
    """Chat image models keep the source's aspect ratio: ``long_side`` on its longer side."""
    try:
        with Image.open(io.BytesIO(source)) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, ValueError):
        return (long_side, long_side)
    scale = long_side / max(width, height, 1)
    return (max(16, round(width * scale)), max(16, round(height * scale)))


def check_image(data: bytes) -> bool:
    """True if Pillow recognizes the bytes as an image (header only, cheap)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.width > 0 and image.height > 0
    except (UnidentifiedImageError, OSError, ValueError):
        return False


# ---------------------------------------------------------------------------- errors


class Reject(Exception):
    """An OpenAI-shaped error answer."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def _bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> Reject:
    return Reject(400, message, param=param, code=code)


# ---------------------------------------------------------------------------- state


@dataclass(slots=True)
class ParsedRequest:
    endpoint: str
    model: str
    prompt: str
    size: tuple[int, int] = (1024, 1024)
    source: bytes | None = None
    output_format: str = "png"
    response_format: str | None = None


@dataclass(slots=True)
class Call:
    id: int
    endpoint: str
    key: str | None
    start: float
    end: float | None = None
    status: int | None = None
    code: str | None = None
    model: str | None = None
    prompt: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(slots=True)
class Admission:
    """An admitted request: its slot and the x-ratelimit-* headers to answer with."""

    flight_id: int
    planned_end: float
    headers: dict[str, str]


@dataclass
class FakeState:
    """Everything one fake provider remembers. Mutated only from its event loop."""

    config: FakeProviderConfig
    rng: random.Random = field(init=False)
    limiter: Gcra | None = field(init=False, default=None)
    counts: Counter[str] = field(default_factory=Counter)
    in_flight: dict[int, float] = field(default_factory=dict)
    peak_in_flight: int = 0
    calls: deque[Call] = field(init=False)
    files: OrderedDict[str, bytes] = field(default_factory=OrderedDict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.rng = random.Random(self.config.seed)
        self.calls = deque(maxlen=self.config.max_log)
        self._build_limiter()

    def _build_limiter(self) -> None:
        rpm = self.config.rpm
        burst = self.config.rpm_burst or (default_burst(rpm) if rpm else 1)
        self.limiter = Gcra(rpm, burst) if rpm else None

    def reconfigure(self, changes: dict[str, Any]) -> None:
        """Apply runtime changes (rpm, concurrency, latency, error rate, ...)."""
        fields = {f.name for f in dataclasses.fields(FakeProviderConfig)}
        unknown = sorted(set(changes) - fields)
        if unknown:
            raise ValueError(f"unknown config fields: {', '.join(unknown)}")
        self.config = dataclasses.replace(self.config, **changes).validate()
        if {"rpm", "rpm_burst"} & set(changes):
            self._build_limiter()
        if "seed" in changes:
            self.rng = random.Random(self.config.seed)
        if "max_log" in changes:
            self.calls = deque(self.calls, maxlen=self.config.max_log)

    def reset(self) -> None:
        self.counts.clear()
        self.calls.clear()
        self.files.clear()
        self.peak_in_flight = len(self.in_flight)
        self.rng = random.Random(self.config.seed)
        self._build_limiter()

    def open_call(self, endpoint: str, key: str | None) -> Call:
        call = Call(
            id=next(self._ids), endpoint=endpoint, key=key_fingerprint(key), start=time.time()
        )
        self.calls.append(call)
        self.counts["requests"] += 1
        return call

    def close_call(self, call: Call, status: int, code: str | None) -> None:
        call.end, call.status, call.code = time.time(), status, code
        self.counts["ok" if status < 300 else str(status)] += 1

    def admit(self, model: str) -> Admission:
        """Take a concurrency slot and an rpm token, or raise a 429 ``Reject``."""
        now = time.monotonic()
        self._check_concurrency(now, model)
        if self.limiter is not None:
            wait = self.limiter.acquire(now)
            if wait > 0:
                raise _rate_limited(self._rpm_message(model, wait), wait, self._headers(now, wait))
        flight_id = next(self._ids)
        self.in_flight[flight_id] = now  # the planned end is set by plan()
        self.peak_in_flight = max(self.peak_in_flight, len(self.in_flight))
        return Admission(flight_id, now, self._headers(now, None))

    def _check_concurrency(self, now: float, model: str) -> None:
        limit = self.config.concurrency
        if limit is None or len(self.in_flight) < limit:
            return
        wait = max(0.001, min(self.in_flight.values()) - now)
        message = (
            f"Rate limit reached for {model} in organization {_ORG} on concurrent requests: "
            f"Limit {limit}, Used {len(self.in_flight)}, Requested 1. "
            f"Please try again in {format_duration(wait)}."
        )
        # Like real providers, a concurrency limit is not reported in the x-ratelimit-*
        # headers (those count requests per minute); only the wait is.
        raise _rate_limited(message, wait, self._headers(now, None))

    def _rpm_message(self, model: str, wait: float) -> str:
        rpm = self.config.rpm
        return (
            f"Rate limit reached for {model} in organization {_ORG} on requests per min (RPM): "
            f"Limit {rpm:g}, Used {rpm:g}, Requested 1. "
            f"Please try again in {format_duration(wait)}."
        )

    def _headers(self, now: float, wait: float | None) -> dict[str, str]:
        """OpenAI's request headers: the per-minute limit, what remains, when it resets."""
        if not self.config.ratelimit_headers:
            return {}
        if self.limiter is not None:
            limit, remaining = round(self.config.rpm or 0), self.limiter.remaining(now)
            reset = wait if wait is not None else self.limiter.reset_after(now)
        else:
            limit, remaining, reset = UNLIMITED, UNLIMITED - 1, 0.0
        return {
            "x-ratelimit-limit-requests": str(limit),
            "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": format_duration(reset),
        }

    def plan(self, admission: Admission, prompt: str) -> tuple[float, bool]:
        """Latency (seconds) and whether this request fails with a 500."""
        latency = sample_latency(self.rng, self.config.latency_ms, self.config.latency_dist)
        if "[[slow]]" in prompt:
            latency *= 10
        self.in_flight[admission.flight_id] = admission.planned_end + latency
        return latency, self.rng.random() < self.config.error_rate

    def release(self, admission: Admission) -> None:
        self.in_flight.pop(admission.flight_id, None)

    def store_file(self, data: bytes) -> str:
        file_id = uuid.uuid4().hex
        self.files[file_id] = data
        while len(self.files) > _MAX_FILES:
            self.files.popitem(last=False)
        return file_id

    def stats(self, with_calls: bool = True) -> dict[str, Any]:
        totals = {
            name: self.counts.get(name, 0)
            for name in ("requests", "ok", "429", "500", "401", "400")
        }
        totals |= {"peak_in_flight": self.peak_in_flight, "in_flight": len(self.in_flight)}
        by_status = {name: n for name, n in self.counts.items() if name != "requests"}
        answer: dict[str, Any] = {
            "totals": totals,
            "by_status": by_status,
            "config": self.config.as_dict(),
        }
        if with_calls:
            answer["calls"] = [call.as_dict() for call in self.calls]
        return answer


def _rate_limited(message: str, wait: float, headers: dict[str, str]) -> Reject:
    headers = headers | {
        "retry-after": str(max(1, math.ceil(wait))),
        "retry-after-ms": str(max(1, math.ceil(wait * 1000))),
    }
    return Reject(429, message, type_="requests", code="rate_limit_exceeded", headers=headers)


# ---------------------------------------------------------------------------- request parsing


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _check_auth(key: str | None) -> None:
    if not key:
        raise Reject(
            401,
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            code="invalid_api_key",
        )
    if "bad" in key:
        raise Reject(
            401,
            f"Incorrect API key provided: {key}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
        )


def _check_quota(key: str) -> None:
    if "noquota" in key:
        raise Reject(
            429,
            "You exceeded your current quota, please check your plan and billing details.",
            type_="insufficient_quota",
            code="insufficient_quota",
        )


def _common_fields(endpoint: str, values: dict[str, Any], default_model: str) -> ParsedRequest:
    prompt = values.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _bad_request(
            "Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter"
        )
    model = str(values.get("model") or default_model)
    size = parse_size(None if values.get("size") is None else str(values.get("size")))
    if size is None:
        raise _bad_request(
            f"Invalid value: '{values.get('size')}'. Expected WIDTHxHEIGHT or 'auto'.", "size"
        )
    output_format = str(values.get("output_format") or "png").lower()
    if output_format not in ("png", "jpeg", "jpg", "webp"):
        raise _bad_request(f"Invalid value: '{output_format}'.", "output_format")
    response_format = values.get("response_format")
    parsed = ParsedRequest(
        endpoint, model, prompt, size, None, output_format, response_format and str(response_format)
    )
    _check_response_format(parsed)
    return parsed


def _check_response_format(parsed: ParsedRequest) -> None:
    rf = parsed.response_format
    if rf is None:
        return
    if parsed.model.startswith("gpt-image"):
        raise Reject(
            400,
            "Unknown parameter: 'response_format'.",
            param="response_format",
            code="unknown_parameter",
        )
    if rf not in ("url", "b64_json"):
        raise _bad_request(
            f"Invalid value: '{rf}'. Supported values are: 'url' and 'b64_json'.", "response_format"
        )


async def _parse_edit(request: Request) -> ParsedRequest:
    form = await request.form()
    try:
        upload = form.get("image") or form.get("image[]")
        if not isinstance(upload, UploadFile):
            raise _bad_request(
                "Missing required parameter: 'image'.", "image", "missing_required_parameter"
            )
        data = await upload.read()
        values = {key: value for key, value in form.items() if isinstance(value, str)}
    finally:
        await form.close()
    parsed = _common_fields("images.edits", values, "gpt-image-1")
    if not check_image(data):
        raise _bad_request(
            "Invalid image file or mode for image 1, please check your image file.",
            "image",
            "invalid_image",
        )
    parsed.source = data
    return parsed


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise _bad_request(
            "We could not parse the JSON body of your request.", None, "invalid_json"
        )
    return body


async def _parse_generation(request: Request) -> ParsedRequest:
    return _common_fields("images.generations", await _json_object(request), "dall-e-2")


def _chat_parts(messages: Any) -> tuple[list[str], list[str]]:
    """Texts and image URLs of the user messages."""
    texts: list[str] = []
    urls: list[str] = []
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            texts.append(content)
            continue
        for part in content if isinstance(content, list) else []:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            elif part.get("type") == "image_url":
                image_url = part.get("image_url")
                urls.append(
                    str(image_url.get("url", "") if isinstance(image_url, dict) else image_url)
                )
    return texts, urls


def _decode_data_url(url: str) -> bytes:
    match = re.fullmatch(r"data:image/[\w.+-]+;base64,(.*)", url, flags=re.DOTALL)
    if match is None:
        raise _bad_request(
            "Only data:image/...;base64 URLs are supported here.", "messages", "invalid_image_url"
        )
    try:
        return base64.b64decode(match.group(1), validate=True)
    except ValueError as exc:
        raise _bad_request("Invalid base64 image data.", "messages", "invalid_image_url") from exc


async def _parse_chat(request: Request) -> ParsedRequest:
    body = await _json_object(request)
    texts, urls = _chat_parts(body.get("messages"))
    parsed = _common_fields(
        "chat.completions",
        {"prompt": "\n".join(texts), "model": body.get("model")},
        "fake-image-chat",
    )
    if urls:
        parsed.source = _decode_data_url(urls[-1])
        parsed.size = chat_size(parsed.source)
        if not check_image(parsed.source):
            raise _bad_request(
                "The image data URL is not a valid image.", "messages", "invalid_image_url"
            )
    return parsed


# ---------------------------------------------------------------------------- answers


def _usage(prompt: str) -> dict[str, Any]:
    text_tokens = max(1, len(prompt) // 4)
    return {
        "input_tokens": text_tokens + 272,
        "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": 272},
        "output_tokens": 4160,
        "total_tokens": text_tokens + 272 + 4160,
    }


def _images_body(
    state: FakeState, request: Request, parsed: ParsedRequest, image: bytes | None
) -> dict[str, Any]:
    data: list[dict[str, Any]] = []
    if image is not None and parsed.response_format == "url":
        file_id = state.store_file(image)
        data.append(
            {
                "url": str(request.url_for("fake_file", file_id=file_id)),
                "revised_prompt": parsed.prompt,
            }
        )
    elif image is not None:
        data.append({"b64_json": base64.b64encode(image).decode()})
    return {"created": int(time.time()), "data": data, "usage": _usage(parsed.prompt)}


def _chat_body(parsed: ParsedRequest, image: bytes | None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": "Here is the edited image."}
    if image is None:
        message["content"] = "I can't produce an image for that request."
    else:
        url = "data:image/png;base64," + base64.b64encode(image).decode()
        message["images"] = [{"type": "image_url", "image_url": {"url": url}}]
    return {
        "id": "chatcmpl-" + uuid.uuid4().hex[:24],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": parsed.model,
        "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
        "usage": {"prompt_tokens": 300, "completion_tokens": 1300, "total_tokens": 1600},
    }


def _render(parsed: ParsedRequest) -> bytes:
    if parsed.source is not None:
        return render_edit(parsed.source, parsed.prompt, parsed.size, parsed.output_format)
    return render_generation(parsed.prompt, parsed.size, parsed.output_format)


async def _produce(state: FakeState, parsed: ParsedRequest, admission: Admission) -> bytes | None:
    """Wait the planned latency (rendering meanwhile); raise the planned fault, if any."""
    latency, fails = state.plan(admission, parsed.prompt)
    wanted = not fails and "[[refuse]]" not in parsed.prompt and "[[noimage]]" not in parsed.prompt
    rendering = asyncio.ensure_future(asyncio.to_thread(_render, parsed)) if wanted else None
    try:
        await asyncio.sleep(latency)
        image = await rendering if rendering is not None else None
    except OSError as exc:
        raise _bad_request("The image could not be processed.", "image", "invalid_image") from exc
    finally:
        if rendering is not None and not rendering.done():
            rendering.cancel()
    if fails:
        raise Reject(
            500,
            "The server had an error while processing your request. Sorry about that!",
            type_="server_error",
            code="server_error",
        )
    if "[[refuse]]" in parsed.prompt:
        raise Reject(
            400,
            "Your request was rejected as a result of our safety system. Your prompt may contain "
            "text that is not allowed by our safety system.",
            type_="image_generation_user_error",
            code="moderation_blocked"
            if parsed.endpoint.startswith("images")
            else "content_policy_violation",
        )
    return image


Parser = Callable[[Request], Awaitable[ParsedRequest]]


class FakeProvider:
    """The route handlers of one fake provider app, around its ``FakeState``."""

    def __init__(self, config: FakeProviderConfig) -> None:
        self.state = FakeState(config.validate())

    async def images_edits(self, request: Request) -> Response:
        return await self._serve(request, "images.edits", _parse_edit)

    async def images_generations(self, request: Request) -> Response:
        return await self._serve(request, "images.generations", _parse_generation)

    async def chat_completions(self, request: Request) -> Response:
        return await self._serve(request, "chat.completions", _parse_chat)

    async def _serve(self, request: Request, endpoint: str, parser: Parser) -> Response:
        key = _bearer(request)
        call = self.state.open_call(endpoint, key)
        try:
            response = await self._answer(request, call, key, parser)
        except Reject as reject:
            self.state.close_call(call, reject.status, reject.code)
            return reject.response()
        except ClientDisconnect:  # the client went away mid-upload (a killed worker)
            self.state.close_call(call, 499, "client_closed_request")
            return Response(status_code=499)
        self.state.close_call(call, response.status_code, None)
        return response

    async def _answer(
        self, request: Request, call: Call, key: str | None, parser: Parser
    ) -> Response:
        _check_auth(key)
        assert key is not None
        parsed = await parser(request)
        call.model, call.prompt = parsed.model, parsed.prompt
        _check_quota(key)
        admission = self.state.admit(parsed.model)
        try:
            image = await _produce(self.state, parsed, admission)
        except Reject as reject:
            reject.headers = admission.headers | reject.headers
            raise
        finally:
            self.state.release(admission)
        if parsed.endpoint == "chat.completions":
            body = _chat_body(parsed, image)
        else:
            body = _images_body(self.state, request, parsed, image)
        return JSONResponse(body, headers=admission.headers)

    async def stats(self, request: Request) -> Response:
        with_calls = request.query_params.get("calls", "1") not in ("0", "false", "no")
        return JSONResponse(self.state.stats(with_calls))

    async def reset(self, request: Request) -> Response:
        del request
        self.state.reset()
        return JSONResponse({"ok": True})

    async def configure(self, request: Request) -> Response:
        try:
            self.state.reconfigure(await _json_object(request))
        except (ValueError, TypeError) as exc:
            return Reject(400, str(exc)).response()
        except Reject as reject:
            return reject.response()
        return JSONResponse(self.state.config.as_dict())

    async def sample(self, request: Request) -> Response:
        index = int(request.path_params["n"])
        data = await asyncio.to_thread(sample_product_photo, index, f"SKU sample {index}")
        return Response(data, media_type="image/jpeg")

    async def file(self, request: Request) -> Response:
        data = self.state.files.get(request.path_params["file_id"])
        if data is None:
            return Reject(404, "No such file.", code="not_found").response()
        return Response(data, media_type="image/png")


def create_fake_provider_app(config: FakeProviderConfig | None = None) -> Starlette:
    """A fresh fake provider app with its own state (``app.state.fake`` is the ``FakeState``)."""
    provider = FakeProvider(config or FakeProviderConfig())
    routes = [
        Route("/v1/images/edits", provider.images_edits, methods=["POST"]),
        Route("/v1/images/generations", provider.images_generations, methods=["POST"]),
        Route("/v1/chat/completions", provider.chat_completions, methods=["POST"]),
        Route("/_fake/stats", provider.stats, methods=["GET"]),
        Route("/_fake/reset", provider.reset, methods=["POST"]),
        Route("/_fake/config", provider.configure, methods=["POST"]),
        Route("/samples/{n:int}.jpg", provider.sample, methods=["GET"]),
        Route("/files/{file_id}.png", provider.file, methods=["GET"], name="fake_file"),
    ]
    app = Starlette(routes=routes)
    app.state.fake = provider.state
    return app


def run_fake_provider(host: str, port: int, config: FakeProviderConfig) -> None:
    """Serve a fake provider with uvicorn until interrupted (blocking; used by the CLI)."""
    uvicorn.run(
        create_fake_provider_app(config),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
    )
