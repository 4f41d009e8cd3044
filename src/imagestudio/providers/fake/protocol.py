"""The OpenAI wire format as the fake speaks it: requests parsed (or refused with the 400 that
OpenAI gives, naming the parameter) and answers shaped.

- ``POST /v1/images/edits``: multipart with ``image`` (or ``image[]``), ``prompt``, ``model``,
  ``size``, ``output_format``, ``response_format`` (refused for ``gpt-image-*``);
- ``POST /v1/images/generations``: the same fields as JSON, without an image;
- ``POST /v1/chat/completions``: user messages with text and an ``image_url`` data URL, as
  OpenRouter's image models take them; the answer keeps the source's aspect ratio.
"""

from __future__ import annotations

import base64
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request

from imagestudio.providers.fake.config import MAX_SIDE, MIN_SIDE
from imagestudio.providers.fake.images import chat_size, check_image
from imagestudio.providers.fake.reject import Reject, bad_request


@dataclass(slots=True)
class ParsedRequest:
    endpoint: str
    model: str
    prompt: str
    size: tuple[int, int] = (1024, 1024)
    source: bytes | None = None
    output_format: str = "png"
    response_format: str | None = None


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``"1024x1536"`` -> (1024, 1536); ``auto``/None -> 1024x1024; anything odd -> None."""
    if text is None or text in ("", "auto"):
        return (1024, 1024)
    match = re.fullmatch(r"(\d{1,5})x(\d{1,5})", text.strip())
    if match is None:
        return None
    width, height = int(match.group(1)), int(match.group(2))
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        return None
    return (width, height)


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _common_fields(endpoint: str, values: dict[str, Any], default_model: str) -> ParsedRequest:
    prompt = values.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise bad_request(
            "Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter"
        )
    model = str(values.get("model") or default_model)
    size = parse_size(None if values.get("size") is None else str(values.get("size")))
    if size is None:
        raise bad_request(
            f"Invalid value: '{values.get('size')}'. Expected WIDTHxHEIGHT or 'auto'.", "size"
        )
    output_format = str(values.get("output_format") or "png").lower()
    if output_format not in ("png", "jpeg", "jpg", "webp"):
        raise bad_request(f"Invalid value: '{output_format}'.", "output_format")
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
        raise bad_request(
            f"Invalid value: '{rf}'. Supported values are: 'url' and 'b64_json'.", "response_format"
        )


async def parse_edit(request: Request) -> ParsedRequest:
    form = await request.form()
    try:
        upload = form.get("image") or form.get("image[]")
        if not isinstance(upload, UploadFile):
            raise bad_request(
                "Missing required parameter: 'image'.", "image", "missing_required_parameter"
            )
        data = await upload.read()
        values = {key: value for key, value in form.items() if isinstance(value, str)}
    finally:
        await form.close()
    parsed = _common_fields("images.edits", values, "gpt-image-1")
    if not check_image(data):
        raise bad_request(
            "Invalid image file or mode for image 1, please check your image file.",
            "image",
            "invalid_image",
        )
    parsed.source = data
    return parsed


async def json_object(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise bad_request("We could not parse the JSON body of your request.", None, "invalid_json")
    return body


async def parse_generation(request: Request) -> ParsedRequest:
    return _common_fields("images.generations", await json_object(request), "dall-e-2")


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
        raise bad_request(
            "Only data:image/...;base64 URLs are supported here.", "messages", "invalid_image_url"
        )
    try:
        return base64.b64decode(match.group(1), validate=True)
    except ValueError as exc:
        raise bad_request("Invalid base64 image data.", "messages", "invalid_image_url") from exc


async def parse_chat(request: Request) -> ParsedRequest:
    body = await json_object(request)
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
            raise bad_request(
                "The image data URL is not a valid image.", "messages", "invalid_image_url"
            )
    return parsed


# gpt-image-1's output tokens at high quality by size (OpenAI's published table); other sizes
# are counted like the nearest, by area.
OUTPUT_TOKENS = {(1024, 1024): 4160, (1024, 1536): 6240, (1536, 1024): 6208}


def output_tokens(size: tuple[int, int]) -> int:
    if size in OUTPUT_TOKENS:
        return OUTPUT_TOKENS[size]
    area = size[0] * size[1]
    nearest = min(OUTPUT_TOKENS, key=lambda known: abs(known[0] * known[1] - area))
    return OUTPUT_TOKENS[nearest]


def _usage(prompt: str, size: tuple[int, int], edit: bool) -> dict[str, Any]:
    """``usage`` as OpenAI's images API answers it for gpt-image-1: text tokens about a
    quarter of the prompt's characters, 272 image tokens for a source image (an edit), and the
    output tokens of the size."""
    text_tokens = max(1, len(prompt) // 4)
    image_tokens = 272 if edit else 0
    out = output_tokens(size)
    return {
        "input_tokens": text_tokens + image_tokens,
        "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": image_tokens},
        "output_tokens": out,
        "total_tokens": text_tokens + image_tokens + out,
    }


def images_body(parsed: ParsedRequest, image: bytes | None, url: str | None) -> dict[str, Any]:
    """An images answer: the image as ``url`` when one is given, else as ``b64_json``."""
    data: list[dict[str, Any]] = []
    if image is not None and url is not None:
        data.append({"url": url, "revised_prompt": parsed.prompt})
    elif image is not None:
        data.append({"b64_json": base64.b64encode(image).decode()})
    usage = _usage(parsed.prompt, parsed.size, parsed.source is not None)
    return {"created": int(time.time()), "data": data, "usage": usage}


def chat_body(parsed: ParsedRequest, image: bytes | None) -> dict[str, Any]:
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
