"""``ImageProvider`` over chat completions, for models that answer with images.

The request is one user message: the prompt as text and, when there is a source, the image as
a ``data:`` URL. ``modalities: ["image", "text"]`` is sent (OpenRouter needs it to return
images). The image is read, in this order, from ``message.images`` (OpenRouter), from content
parts of type ``image_url``, or from a ``data:image/...`` URL (markdown or bare) in the text.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from typing import Any

from imagestudio.domain import SourceFile
from imagestudio.errors import ContentRejected, NoImageReturned
from imagestudio.providers.base import ImageRequest, ImageResult
from imagestudio.providers.error_map import scrub
from imagestudio.providers.openai_images import OpenAIClientBase, decode_data_url
from imagestudio.providers.retry_after import parse_rate_info

_URL_IN_TEXT = re.compile(
    r"(data:image/[\w.+-]+;base64,[A-Za-z0-9+/=_-]+)|!\[[^\]]*\]\((https?://[^)\s]+)\)"
)


def data_url(source: SourceFile) -> str:
    return f"data:{source.mime};base64,{base64.b64encode(source.data).decode()}"


def chat_messages(request: ImageRequest) -> list[dict[str, Any]]:
    """The ``messages`` argument for the request (pure)."""
    if request.source is None:
        return [{"role": "user", "content": request.prompt}]
    parts: list[dict[str, Any]] = [
        {"type": "text", "text": request.prompt},
        {"type": "image_url", "image_url": {"url": data_url(request.source)}},
    ]
    return [{"role": "user", "content": parts}]


def _part_url(part: Any) -> str | None:
    if isinstance(part, dict):
        image_url = part.get("image_url")
        url = image_url.get("url") if isinstance(image_url, dict) else image_url
        return url if isinstance(url, str) else None
    return None


def image_urls(message: Any) -> Iterator[str]:
    """Every image URL in a chat answer's message, best source first (pure)."""
    extra = getattr(message, "model_extra", None) or {}
    for item in extra.get("images") or []:
        if (url := _part_url(item)) is not None:
            yield url
    content = getattr(message, "content", None)
    if isinstance(content, list):
        for part in content:
            if (url := _part_url(part)) is not None:
                yield url
    elif isinstance(content, str):
        for match in _URL_IN_TEXT.finditer(content):
            yield match.group(1) or match.group(2)


class OpenAIChatProvider(OpenAIClientBase):
    """Chat-completions image models (OpenRouter-style ``message.images``)."""

    async def _generate(self, request: ImageRequest) -> ImageResult:
        raw = await self._sdk(
            self._client.chat.completions.with_raw_response.create(
                model=request.model,
                messages=chat_messages(request),  # type: ignore[arg-type]
                extra_body={"modalities": ["image", "text"]},
            )
        )
        return ImageResult(await self._image(self.parsed(raw)), parse_rate_info(raw.headers))

    async def _image(self, completion: Any) -> bytes:
        choices = getattr(completion, "choices", None)
        if not isinstance(choices, list) or not choices:
            kind = "without choices" if choices is None else "with no choice in its choices"
            raise NoImageReturned(f"provider answered 200 {kind}")
        choice = choices[0]
        url = next(image_urls(choice.message), None)
        if url is not None:
            return decode_data_url(url) or await self.download(url)
        refusal = choice.message.refusal
        if choice.finish_reason == "content_filter" or refusal:
            detail = scrub(refusal or "content filter", [self.config.api_key])
            raise ContentRejected(f"provider refused the request: {detail}")
        extra = getattr(choice.message, "model_extra", None) or {}
        if extra.get("images"):
            raise NoImageReturned("provider answered 200 with message.images but no image URL")
        raise NoImageReturned("provider answered without an image")
