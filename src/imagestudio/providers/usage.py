"""What a provider's answer says a call used: its ``usage``, read defensively (pure).

OpenAI's images API answers ``usage: {input_tokens, input_tokens_details: {text_tokens,
image_tokens}, output_tokens, total_tokens}`` for ``gpt-image-*``; ``dall-e-*`` answers none.
Chat completions answer ``usage: {prompt_tokens, completion_tokens}``. Compatible servers may
send any of these, partly, or nothing: what is missing or not a whole number stays ``None``.
"""

from __future__ import annotations

from typing import Any

from imagestudio.domain import Usage


def _get(obj: Any, name: str) -> Any:
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if value < 0 or value != int(value):
        return None
    return int(value)


def images_usage(answer: Any) -> Usage | None:
    """The ``usage`` of an images answer, or ``None`` when it has none."""
    usage = _get(answer, "usage")
    if usage is None:
        return None
    details = _get(usage, "input_tokens_details")
    text = _count(_get(details, "text_tokens")) if details is not None else None
    image = _count(_get(details, "image_tokens")) if details is not None else None
    total_in = _count(_get(usage, "input_tokens"))
    if text is None and image is None:
        text = total_in  # no split given: count the input as text
    found = Usage(
        input_text_tokens=text,
        input_image_tokens=image,
        output_tokens=_count(_get(usage, "output_tokens")),
    )
    return found if found != Usage() else None


def chat_usage(answer: Any) -> Usage | None:
    """The ``usage`` of a chat completion (prompt and completion tokens), or ``None``."""
    usage = _get(answer, "usage")
    if usage is None:
        return None
    found = Usage(
        input_text_tokens=_count(_get(usage, "prompt_tokens")),
        output_tokens=_count(_get(usage, "completion_tokens")),
    )
    return found if found != Usage() else None
