"""The adapter table, api style and size choice, adapter construction and request shaping."""

from __future__ import annotations

import httpx
import pytest
from openai.types.chat import ChatCompletionMessage

from imagestudio.domain import SourceFile
from imagestudio.errors import NoImageReturned, PayloadInvalid
from imagestudio.jobs.intake import parse_payload
from imagestudio.providers.base import ImageRequest, ProviderConfig
from imagestudio.providers.openai_chat import OpenAIChatProvider, chat_messages, image_urls
from imagestudio.providers.openai_images import (
    OpenAIImagesProvider,
    decode_b64_image,
    decode_data_url,
    image_params,
    looks_like_image,
)
from imagestudio.providers.registry import (
    ADAPTERS,
    choose_api_style,
    make_provider,
    provider_size,
)
from testkit.payloads import batch_payload

PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQ"
    "AAAABJRU5ErkJggg=="
)


@pytest.mark.parametrize(
    ("model", "explicit", "style"),
    [
        ("gpt-image-1", None, "images"),
        ("gpt-image-1.5", None, "images"),
        ("dall-e-3", None, "images"),
        ("dall-e-2", None, "images"),
        ("openai/gpt-image-1", None, "images"),
        ("gpt-4o", None, "chat"),
        ("gpt-5-image", None, "chat"),
        ("chatgpt-4o-latest", None, "chat"),
        ("gemini-2.5-flash-image", None, "chat"),
        ("google/gemini-2.5-flash-image-preview", None, "chat"),
        ("claude-sonnet-4", None, "chat"),
        ("GPT-4o", None, "chat"),
        ("flux-pro", None, "images"),
        ("stable-diffusion-xl", None, "images"),
        ("gpt-image-1", "chat", "chat"),
        ("gemini-2.5-flash-image", "images", "images"),
        ("flux-pro", "", "images"),
    ],
)
def test_choose_api_style(model: str, explicit: str | None, style: str) -> None:
    assert choose_api_style(model, explicit) == style


def test_choose_api_style_rejects_unknown_explicit_style() -> None:
    with pytest.raises(ValueError, match="unknown api style 'responses'; supported: images, chat"):
        choose_api_style("gpt-image-1", "responses")


@pytest.mark.parametrize(
    ("model", "width", "height", "size"),
    [
        ("gpt-image-1", 800, 800, "1024x1024"),
        ("gpt-image-1", 1000, 920, "1024x1024"),  # within 10% of square
        ("gpt-image-1", 920, 1000, "1024x1024"),
        ("gpt-image-1", 1200, 800, "1536x1024"),
        ("gpt-image-1", 800, 1200, "1024x1536"),
        ("gpt-image-1", 1920, 1080, "1536x1024"),
        ("openai/gpt-image-1", 600, 1000, "1024x1536"),
        ("dall-e-3", 1000, 1000, "1024x1024"),
        ("dall-e-3", 1600, 900, "1792x1024"),
        ("dall-e-3", 900, 1600, "1024x1792"),
        ("dall-e-2", 1600, 900, "1024x1024"),
        ("dall-e-2", 512, 512, "1024x1024"),
        ("flux-pro", 1600, 900, "1536x1024"),
        ("gemini-2.5-flash-image", 700, 1000, "1024x1536"),
    ],
)
def test_provider_size(model: str, width: int, height: int, size: str) -> None:
    assert provider_size(model, width, height) == size


def test_provider_size_rejects_empty_target() -> None:
    with pytest.raises(ValueError, match="positive"):
        provider_size("gpt-image-1", 0, 100)


def test_the_table_lists_every_api_style_and_its_adapter() -> None:
    assert dict(ADAPTERS) == {"images": OpenAIImagesProvider, "chat": OpenAIChatProvider}


@pytest.mark.parametrize(("style", "adapter"), list(ADAPTERS.items()))
async def test_make_provider_builds_every_style_in_the_table(style: str, adapter: object) -> None:
    provider = make_provider(ProviderConfig("http://127.0.0.1:9/v1", "sk-test", "m", style))
    try:
        assert type(provider) is adapter
    finally:
        await provider.aclose()


@pytest.mark.parametrize("style", ["responses", "", "Images"])
def test_make_provider_refuses_a_style_the_table_lacks(style: str) -> None:
    config = ProviderConfig("http://127.0.0.1:9/v1", "sk-test", "m", style)
    supported = ", ".join(ADAPTERS)
    with pytest.raises(ValueError, match=f"unknown api style {style!r}; supported: {supported}$"):
        make_provider(config)


@pytest.mark.parametrize("style", [*ADAPTERS, None])
def test_payload_accepts_every_style_in_the_table(style: str | None) -> None:
    payload = parse_payload(batch_payload("http://127.0.0.1:9", "j", options={"api_style": style}))
    assert payload.options.api_style == style


def test_payload_validation_names_the_styles_of_the_table() -> None:
    raw = batch_payload("http://127.0.0.1:9", "j", options={"api_style": "responses"})
    with pytest.raises(PayloadInvalid) as caught:
        parse_payload(raw)
    assert caught.value.field == "options.api_style"
    assert caught.value.reason == "unknown api style 'responses'; supported: images, chat"
    assert all(style in caught.value.reason for style in ADAPTERS)


async def test_an_injected_client_stays_open_after_aclose() -> None:
    config = ProviderConfig("http://127.0.0.1:9/v1", "sk-test", "gpt-image-1", "images")
    async with httpx.AsyncClient() as client:
        provider = make_provider(config, http_client=client)
        await provider.aclose()
        assert not client.is_closed


@pytest.mark.parametrize(
    ("model", "has_response_format"),
    [("gpt-image-1", False), ("openai/gpt-image-1", False), ("dall-e-2", True), ("flux", False)],
)
def test_image_params_never_send_response_format_to_gpt_image(
    model: str, has_response_format: bool
) -> None:
    params = image_params(ImageRequest("p", model, "1024x1024"))
    assert ("response_format" in params) is has_response_format
    assert params["n"] == 1
    if has_response_format:
        assert params["response_format"] == "b64_json"


def test_chat_messages_carry_text_and_the_source_as_data_url() -> None:
    source = SourceFile(b"\x89PNG\r\n\x1a\nxx", "a.png", "image/png")
    [message] = chat_messages(ImageRequest("make it shine", "gemini", "1024x1024", source))
    text, image = message["content"]
    assert text == {"type": "text", "text": "make it shine"}
    assert image["image_url"]["url"].startswith("data:image/png;base64,iVBORw0KGg")
    assert chat_messages(ImageRequest("p", "gemini", "1024x1024")) == [
        {"role": "user", "content": "p"}
    ]


@pytest.mark.parametrize(
    "payload",
    [
        {
            "content": "ok",
            "images": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG_B64}}
            ],
        },
        {
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG_B64}}
            ]
        },
        {"content": f"Here it is: ![result](data:image/png;base64,{PNG_B64}) enjoy"},
        {"content": f"data:image/png;base64,{PNG_B64}"},
    ],
)
def test_image_urls_find_the_image_in_every_known_shape(payload: dict[str, object]) -> None:
    message = ChatCompletionMessage.model_construct(role="assistant", **payload)
    url = next(image_urls(message))
    assert decode_data_url(url) is not None


def test_image_urls_read_markdown_http_links() -> None:
    message = ChatCompletionMessage.model_construct(
        role="assistant", content="![x](https://cdn.example/img.png)"
    )
    assert list(image_urls(message)) == ["https://cdn.example/img.png"]


def test_image_urls_is_empty_without_an_image() -> None:
    message = ChatCompletionMessage.model_construct(role="assistant", content="sorry")
    assert list(image_urls(message)) == []


@pytest.mark.parametrize("text", ["!!!not base64!!!", "aGVsbG8gd29ybGQ="])
def test_decode_b64_image_rejects_garbage_and_non_images(text: str) -> None:
    with pytest.raises(NoImageReturned):
        decode_b64_image(text)


def test_looks_like_image() -> None:
    assert looks_like_image(decode_b64_image(PNG_B64))
    assert looks_like_image(b"RIFF\0\0\0\0WEBPVP8 ")
    assert looks_like_image(b"\xff\xd8\xff\xe0")
    assert not looks_like_image(b"<html>")
    assert decode_data_url("https://example.com/a.png") is None
