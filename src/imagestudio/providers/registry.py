"""Choosing how to talk to a model, and at what size, and building the provider.

``ADAPTERS`` is the one table of adapters, by api style: ``make_provider`` builds from it and
the payload's ``options.api_style`` is checked against it. ``choose_api_style`` and
``provider_size`` are pure. Model names may carry a vendor prefix (``openai/gpt-image-1``,
``google/gemini-...``): the family is read from the part after the last ``/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Protocol

from imagestudio.domain import ApiStyle
from imagestudio.providers.base import ImageProvider, ProviderConfig
from imagestudio.providers.openai_chat import OpenAIChatProvider
from imagestudio.providers.openai_images import HttpClient, OpenAIImagesProvider
from imagestudio.security.http import Outbound


class Adapter(Protocol):
    """How an adapter is built: its config, and optionally an HTTP client it does not own."""

    def __call__(
        self,
        config: ProviderConfig,
        *,
        http_client: HttpClient | None = None,
        outbound: Outbound | None = None,
    ) -> ImageProvider: ...


# Every api style and the adapter that speaks it: a new style is one line here.
ADAPTERS: Mapping[ApiStyle, Adapter] = {
    "images": OpenAIImagesProvider,
    "chat": OpenAIChatProvider,
}


def is_api_style(value: str) -> bool:
    return value in ADAPTERS


def unknown_api_style(value: str) -> str:
    """The refusal of an api style not in ``ADAPTERS``, naming the ones that are."""
    return f"unknown api style {value!r}; supported: {', '.join(ADAPTERS)}"


_CHAT_PREFIXES = ("gpt-4", "gpt-5", "chatgpt", "gemini", "claude")
_IMAGES_PREFIXES = ("gpt-image", "dall-e")
SQUARE_TOLERANCE = 0.10


def model_family(model: str) -> str:
    """``"openai/GPT-Image-1"`` -> ``"gpt-image-1"``."""
    return model.strip().lower().rsplit("/", 1)[-1]


def choose_api_style(model: str, explicit: str | None = None) -> ApiStyle:
    """The api style for a model (by its family; ``images`` when unknown); an explicit
    choice wins and must be in ``ADAPTERS``."""
    if explicit:
        if is_api_style(explicit):
            return explicit
        raise ValueError(unknown_api_style(explicit))
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
    config: ProviderConfig,
    *,
    http_client: HttpClient | None = None,
    outbound: Outbound | None = None,
) -> ImageProvider:
    """The adapter ``ADAPTERS`` has for ``config.api_style`` (``ValueError`` if none).

    ``outbound`` is the process's guarded path (the service always passes it); without it the
    adapter builds its own from ``config.allow_list``. ``http_client`` (tests) replaces only
    the SDK's client. Either, if given, stays the caller's."""
    style = config.api_style
    if not is_api_style(style):
        raise ValueError(unknown_api_style(style))
    return ADAPTERS[style](config, http_client=http_client, outbound=outbound)
