"""Validate a submitted payload and turn it into a ``JobSpec``. Pure: no I/O.

Every refusal is a ``PayloadInvalid`` naming the field by its dotted path, which the API turns
into a 422.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from imagestudio.domain import (
    MAX_SIDE,
    MIN_SIDE,
    OUTPUT_FORMATS,
    ImageSpec,
    JobSpec,
    OutputSpec,
    ProviderSpec,
    WebhookSpec,
)
from imagestudio.errors import PayloadInvalid
from imagestudio.jobs.payload import (
    BATCH_SKU,
    MAX_STEM,
    JobPayload,
    SourceImage,
    payload_hash,
    redacted_config,
)
from imagestudio.jobs.prompts import build_prompt
from imagestudio.providers.registry import choose_api_style
from imagestudio.security.redact import strip_userinfo
from imagestudio.security.webhook_secret import webhook_secret_problem

_SIZE = re.compile(r"^\s*(\d+)\s*[xX*]\s*(\d+)\s*$")
_FORMAT_ALIASES = {"jpg": "jpeg"}
DEFAULT_SIDE = 1024
DEFAULT_QUALITY = 90


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Run a burst of allocation without the cyclic garbage collector.

    Intake allocates a few objects per image and frees none of them until it is done, so the
    collector's passes find nothing while rescanning an ever larger heap: for a 100,000-image
    payload they were half of parsing and validating it (1.2 s of CPU, 0.6 s without). The
    pause is process-wide and lasts the block (about a second at most); reference counting
    still frees what it can. A block started while the collector is already paused (another
    intake at the same time) leaves it to the first one to resume it.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


MAX_API_KEY = 4096
# A key goes into an ``Authorization`` header: no control characters, no line breaks.
API_KEY_PATTERN = re.compile(rf"[\x21-\x7e]{{1,{MAX_API_KEY}}}")


@dataclass(frozen=True, slots=True)
class IntakeLimits:
    max_images: int = 5000
    max_prompt_chars: int = 32_000  # OpenAI's gpt-image-1 prompt limit


def parse_payload(raw: Any) -> JobPayload:
    """Parse JSON (bytes, or already parsed) into a ``JobPayload``; a body that is not JSON
    and pydantic's first error become a ``PayloadInvalid``."""
    may_hold_nul = True
    if isinstance(raw, bytes | bytearray):
        may_hold_nul = _UNSTORABLE_ESCAPE.search(raw) is not None
        try:
            raw = json.loads(raw)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise PayloadInvalid("body", f"not valid JSON: {exc}") from exc
    if may_hold_nul:
        _refuse_unstorable(raw, ())
    try:
        return JobPayload.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise PayloadInvalid(field, first["msg"].removeprefix("Value error, ")) from exc


# In JSON, a NUL or a lone surrogate can only be written as an escape (``\u0000``, ``\udXXX``):
# bodies without one (nearly all) are not walked.
_UNSTORABLE_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


def _shown(key: str) -> str:
    """``key`` with the characters that cannot be shown or stored escaped."""
    return "".join(
        f"\\u{ord(c):04x}" if c == "\x00" or "\ud800" <= c <= "\udfff" else c for c in key
    )


def _refuse_unstorable(value: Any, path: tuple[str, ...]) -> None:
    """Refuse a NUL character or a lone surrogate in any string or key, naming where it is:
    PostgreSQL's text and jsonb cannot hold a NUL, and no database takes text that is not
    valid Unicode."""
    if isinstance(value, str):
        problem = None
        if "\x00" in value:
            problem = "contains a NUL character"
        elif not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                problem = "contains a lone surrogate (not valid Unicode)"
        if problem:
            raise PayloadInvalid(".".join(path) or "body", problem)
    elif isinstance(value, dict):
        for key, item in value.items():
            where = (*path, _shown(str(key)))
            _refuse_unstorable(key, where)
            _refuse_unstorable(item, where)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_unstorable(item, (*path, str(index)))


def build_job_spec(payload: JobPayload, *, user_id: str, limits: IntakeLimits) -> JobSpec:
    """Check what pydantic cannot and normalize the payload into a ``JobSpec``."""
    options = payload.options
    api_key = (options.api_key or "").strip()
    if not api_key:
        raise PayloadInvalid("options.api_key", "an API key for the image provider is required")
    if not API_KEY_PATTERN.fullmatch(api_key):
        raise PayloadInvalid(
            "options.api_key",
            f"expected printable ASCII without spaces, at most {MAX_API_KEY} characters"
            " (it is sent in an HTTP header)",
        )
    api_base = _check_url("options.api_base", options.api_base or "")
    model = (options.model or "").strip()
    if not model:
        raise PayloadInvalid("options.model", "a model name is required")
    images = _images(payload, limits)
    webhook = _webhook(payload)
    config = redacted_config(payload)
    return JobSpec(
        job_id=payload.job_id,
        user_id=user_id,
        mode=payload.mode,
        output=output_spec(payload),
        provider=ProviderSpec(
            api_base=api_base.rstrip("/"),
            model=model,
            api_style=choose_api_style(model, options.api_style),
        ),
        images=images,
        config=config,
        payload_hash=payload_hash(config),
        api_key=api_key,
        max_concurrency=options.max_concurrency,
        sku_serial=options.sku_serial,
        max_cost=options.max_cost,
        webhook=webhook,
    )


def _webhook(payload: JobPayload) -> WebhookSpec | None:
    """The job's webhook endpoint, checked for its form (its address is checked at submit
    and at every send, ``JobService``); a secret without a URL is refused too."""
    options = payload.options
    secret = (options.webhook_secret or "").strip() or None
    if secret is not None:
        problem = webhook_secret_problem(secret)
        if problem is not None:
            raise PayloadInvalid("options.webhook_secret", problem)
    if not (options.webhook_url or "").strip():
        if secret is not None:
            raise PayloadInvalid("options.webhook_url", "a webhook secret needs a webhook URL")
        return None
    url = _check_url("options.webhook_url", options.webhook_url or "")
    if "@" in urlsplit(url).netloc:
        raise PayloadInvalid(
            "options.webhook_url", "credentials in the URL are refused; sign with a secret"
        )
    return WebhookSpec(url=url, secret=secret, image_events=options.webhook_image_events)


def output_spec(payload: JobPayload) -> OutputSpec:
    """Explicit ``target_*``/``output_format``/``quality`` win over ``options.settings``."""
    options, settings = payload.options, payload.options.settings
    width, height = _size(payload)
    fmt_field = "options.output_format" if options.output_format else "options.settings.imageFormat"
    fmt = (options.output_format or settings.image_format or "png").strip().lower()
    fmt = _FORMAT_ALIASES.get(fmt, fmt)
    if fmt not in OUTPUT_FORMATS:
        supported = ", ".join(OUTPUT_FORMATS)
        raise PayloadInvalid(fmt_field, f"unknown format {fmt!r}; supported: {supported}")
    quality_field = "options.quality" if options.quality is not None else "options.settings.quality"
    quality = options.quality if options.quality is not None else settings.quality
    quality = DEFAULT_QUALITY if quality is None else quality
    if not 1 <= quality <= 100:
        raise PayloadInvalid(quality_field, f"quality {quality} is out of range 1..100")
    return OutputSpec(width=width, height=height, format=fmt, quality=quality)


def _size(payload: JobPayload) -> tuple[int, int]:
    """Width and height, each checked under the name of the field it came from."""
    options = payload.options
    sides = {"width": options.target_width, "height": options.target_height}
    fields = {"width": "options.target_width", "height": "options.target_height"}
    image_size = options.settings.image_size
    if image_size is not None and None in sides.values():
        parsed = _SIZE.match(image_size)
        if parsed is None:
            raise PayloadInvalid(
                "options.settings.imageSize", "expected WIDTHxHEIGHT like 1536x1536"
            )
        for name, value in zip(("width", "height"), parsed.groups(), strict=True):
            if sides[name] is None:
                sides[name], fields[name] = int(value), "options.settings.imageSize"
    width, height = (DEFAULT_SIDE if v is None else v for v in sides.values())
    return _side(fields["width"], width), _side(fields["height"], height)


def _side(field: str, value: int) -> int:
    if not MIN_SIDE <= value <= MAX_SIDE:
        raise PayloadInvalid(field, f"{value} is out of range {MIN_SIDE}..{MAX_SIDE}")
    return value


# The common shape, accepted without parsing: an http(s) scheme, a host name of dot-separated
# labels (letters, digits, inner hyphens) and maybe a port. Any other URL goes through
# ``_check_parsed``, which decides (a 100,000-image job checks 100,000 URLs).
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PLAIN_URL = re.compile(
    rf"(?:[Hh][Tt][Tt][Pp][Ss]?)://(?P<host>(?:{_LABEL}\.)*{_LABEL})(?::(?P<port>\d{{1,5}}))?(?:[/?#]|\Z)"
)
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
MAX_HOST_CHARS = 253
MAX_PORT = 65535


def _check_url(field: str, url: str) -> str:
    url = url.strip()
    plain = _PLAIN_URL.match(url)
    if plain and len(plain.group("host")) <= MAX_HOST_CHARS:
        port = plain.group("port")
        if port is None or 0 < int(port) <= MAX_PORT:
            return url
    _check_parsed(field, url)
    return url


def _check_parsed(field: str, url: str) -> None:
    """Refuse ``url`` unless it is http(s) with a valid host and port and no credentials.

    Credentials (``http://user:KEY@host``) are refused rather than stored or moved: the
    provider key goes in ``options.api_key``, and a source needing a password is not one we
    may fetch. The message shows the URL without them.
    """
    shown = repr(strip_userinfo(url)[:200])
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise PayloadInvalid(field, f"malformed URL {shown}: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PayloadInvalid(field, f"expected an http(s) URL, got {shown}")
    if "@" in parts.netloc:
        raise PayloadInvalid(
            field,
            f"credentials in the URL are not accepted ({shown}); send the provider key as"
            " options.api_key",
        )
    if port == 0:
        raise PayloadInvalid(field, f"port 0 in {shown}")
    problem = host_problem(parts.hostname)
    if problem:
        raise PayloadInvalid(field, f"{problem} in {shown}")


def host_problem(host: str) -> str | None:
    """Why ``host`` (as ``urlsplit`` gives it: lower case, no brackets) cannot name a host,
    or None. IP literals pass; names need 1-63 character labels, 253 characters in all, and
    must encode to IDNA (non-ASCII names)."""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        return None
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    try:
        ascii_name = name.encode("idna").decode("ascii") if not name.isascii() else name
    except UnicodeError:
        return f"host {host[:80]!r} is not a valid international domain name"
    if not ascii_name or len(ascii_name) > MAX_HOST_CHARS:
        return f"host {host[:80]!r} is empty or longer than {MAX_HOST_CHARS} characters"
    if not all(_HOST_LABEL.fullmatch(label) for label in ascii_name.split(".")):
        return f"host {host[:80]!r} is not a valid host name (empty, long or bad label)"
    return None


def _images(payload: JobPayload, limits: IntakeLimits) -> tuple[ImageSpec, ...]:
    selected = _selected(payload, _skus(payload))
    if len(selected) > limits.max_images:
        raise PayloadInvalid(
            "options.sku_images_map",
            f"{len(selected)} images exceed the maximum of {limits.max_images}",
        )
    prompts = _prompts(payload, limits)
    specs: list[ImageSpec] = []
    for sku, index, image in selected:
        prompt = prompts[index == 0]
        if not prompt:
            raise PayloadInvalid(
                "options.prompt_templates",
                "no template gives a prompt (need common_cn or common_en)",
            )
        stem = image.stem or _stem_of(image.name or image.url)[:MAX_STEM] or f"{sku}-{index + 1}"
        specs.append(
            ImageSpec(
                position=len(specs),
                sku=sku,
                sku_index=index,
                stem=stem,
                name=image.name or stem,
                source_url=_check_url(f"options.sku_images_map.{sku}.{index}.url", image.url),
                prompt=prompt,
            )
        )
    return tuple(specs)


def _prompts(payload: JobPayload, limits: IntakeLimits) -> tuple[str, str]:
    """The two prompts a job can send, built once: ``(other images', main image's)``; each
    template and each prompt at most ``limits.max_prompt_chars`` long."""
    options, cap = payload.options, limits.max_prompt_chars
    for name, template in options.prompt_templates.items():
        if len(template) > cap:
            raise PayloadInvalid(
                f"options.prompt_templates.{name}",
                f"{len(template)} characters exceed the maximum of {cap}",
            )
    other, main = (
        build_prompt(options.prompt_templates, use_english=options.use_english, is_main=is_main)
        for is_main in (False, True)
    )
    longest = max(len(other), len(main))
    if longest > cap:
        raise PayloadInvalid(
            "options.prompt_templates",
            f"the prompt built from the templates has {longest} characters, over the maximum"
            f" of {cap}",
        )
    return other, main


def _skus(payload: JobPayload) -> list[str]:
    """The SKUs in order, checked against ``sku_images_map`` both ways."""
    options = payload.options
    skus = list(options.skus)
    if not skus and payload.sku and payload.sku != BATCH_SKU:
        skus = [payload.sku]
    if not skus:
        raise PayloadInvalid("options.skus", "at least one SKU is required")
    if len(set(skus)) != len(skus):
        raise PayloadInvalid("options.skus", "a SKU is listed twice")
    for sku in skus:
        if not options.sku_images_map.get(sku):
            raise PayloadInvalid(f"options.sku_images_map.{sku}", "this SKU has no images")
    for sku in options.sku_images_map:
        if sku not in skus:
            raise PayloadInvalid(
                f"options.sku_images_map.{sku}", "images for a SKU not in options.skus"
            )
    return skus


def _selected(payload: JobPayload, skus: list[str]) -> list[tuple[str, int, SourceImage]]:
    """Every (sku, index, image) to process; the single-image form keeps only its one image.

    The single-image form is a payload whose top-level ``sku`` is a real SKU (not
    ``__batch__``) and whose ``stem`` is set: only that SKU's image with that stem is made.
    """
    options = payload.options
    chosen = [(sku, i, img) for sku in skus for i, img in enumerate(options.sku_images_map[sku])]
    single = payload.mode == "single_generate" or (
        payload.sku not in (None, BATCH_SKU) and payload.stem is not None
    )
    if not single:
        return chosen
    if payload.stem is None:
        if len(chosen) != 1:
            raise PayloadInvalid("stem", "single_generate needs a stem or exactly one image")
        return chosen
    match = [c for c in chosen if c[0] == payload.sku and c[2].stem == payload.stem]
    if not match:
        raise PayloadInvalid(
            "stem", f"no image with stem {payload.stem!r} under sku {payload.sku!r}"
        )
    return match[:1]


def _stem_of(name: str) -> str:
    base = name.rstrip("/").rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if "." in base else base
