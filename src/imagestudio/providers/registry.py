"""Choosing how to talk to a model, and at what size, and building the provider.

``choose_api_style`` and ``provider_size`` are pure; ``make_provider`` builds the adapter.
Model names may carry a vendor prefix (``openai/gpt-image-1``, ``google/gemini-...``): the
family is read from the part after the last ``/``.
"""

from __future__ import annotations

from typing import Literal

from imagestudio.providers.base import ImageProvider, ProviderConfig
from imagestudio.providers.openai_chat import OpenAIChatProvider
from imagestudio.providers.openai_images import HttpClient, OpenAIImagesProvider

ApiStyle = Literal["images", "chat"]

_CHAT_PREFIXES = ("gpt-4", "gpt-5", "chatgpt", "gemini", "claude")
_IMAGES_PREFIXES = ("gpt-image", "dall-e")
SQUARE_TOLERANCE = 0.10


def model_family(model: str) -> str:
    """``"openai/GPT-Image-1"`` -> ``"gpt-image-1"``."""
    return model.strip().lower().rsplit("/", 1)[-1]


def choose_api_style(model: str, explicit: str | None = None) -> ApiStyle:
    """``images`` or ``chat`` for a model; an explicit choice wins."""
    if explicit == "images":
        return "images"
    if explicit == "chat":
        return "chat"
    if explicit:
        raise ValueError(f"unknown api style {explicit!r}: expected 'images' or 'chat'")
    family = model_family(model)
    if family.startswith(_IMAGES_PREFIXES):
        return "images"
    if family.startswith(_CHAT_PREFIXES):
        return "chat"
    return "images"


def _orientation(width: int, height: int) -> Literal["square", "landscape", "portrait"]:
    if width <= 0 or height <= 0:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    aspect = width / height
    if abs(aspect - 1.0) <= SQUARE_TOLERANCE:
        return "square"
    return "landscape" if aspect > 1.0 else "portrait"


_SIZES: dict[str, dict[str, str]] = {
    "gpt-image": {"square": "1024x1024", "landscape": "1536x1024", "portrait": "1024x1536"},
    "dall-e-3": {"square": "1024x1024", "landscape": "1792x1024", "portrait": "1024x1792"},
    "dall-e-2": {"square": "1024x1024", "landscape": "1024x1024", "portrait": "1024x1024"},
}


def provider_size(model: str, width: int, height: int) -> str:
    """The size to ask the model for, given the final target size (post-processing crops).

    gpt-image (and unknown models): 1024x1024, 1536x1024 or 1024x1536; dall-e-3: 1024x1024,
    1792x1024 or 1024x1792; dall-e-2: 1024x1024. Square when the aspect is within 10% of 1.
    """
    family = model_family(model)
    table = _SIZES["gpt-image"]
    for prefix in ("dall-e-3", "dall-e-2"):
        if family.startswith(prefix):
            table = _SIZES[prefix]
    return table[_orientation(width, height)]


def make_provider(
    config: ProviderConfig, *, http_client: HttpClient | None = None
) -> ImageProvider:
    """The adapter for ``config.api_style``; ``http_client`` (if given) stays the caller's."""
    if config.api_style == "chat":
        return OpenAIChatProvider(config, http_client=http_client)
    return OpenAIImagesProvider(config, http_client=http_client)
