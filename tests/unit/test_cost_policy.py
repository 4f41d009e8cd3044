"""Cost, pure: the price table's lookup, a call's cost, the budget's decision; usage read from
answers; the CLI's cost caption."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from imagestudio.cli.client import cost_caption, summary_table
from imagestudio.domain import Usage
from imagestudio.policy.cost import Price, call_cost, call_estimate, may_start, price_for
from imagestudio.providers.fake.protocol import output_tokens
from imagestudio.providers.usage import chat_usage, images_usage
from imagestudio.runtime.services import price_table
from imagestudio.settings import ModelPrice, Settings

GPT = Price(text_input_per_mtok=5, image_input_per_mtok=10, output_per_mtok=40, estimate=0.25)
DALLE = Price(per_image={"1024x1024": 0.04, "*": 0.08}, estimate=0.08)
TABLE = {"gpt-image-1": GPT, "dall-e-3": DALLE, "gpt-image-1-mini": Price(output_per_mtok=8)}


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-image-1", GPT),
        ("GPT-Image-1", GPT),
        ("gpt-image-1-2025-04-23", GPT),
        ("openai/gpt-image-1", GPT),
        ("gpt-image-1-mini", TABLE["gpt-image-1-mini"]),  # the longest known prefix wins
        ("dall-e-3", DALLE),
        ("dall-e-2", None),
        ("fake-image-1", None),
    ],
)
def test_price_for(model: str, expected: Price | None) -> None:
    assert price_for(TABLE, model) == expected


@pytest.mark.parametrize(
    ("price", "usage", "size", "expected"),
    [
        (GPT, Usage(100, 272, 4160), "1024x1024", (100 * 5 + 272 * 10 + 4160 * 40) / 1e6),
        (GPT, Usage(None, None, 1000), "1024x1024", 0.04),
        (GPT, None, "1024x1024", 0.25),  # no usage on a token-priced model: the estimate
        (DALLE, None, "1024x1024", 0.04),
        (DALLE, None, "1792x1024", 0.08),  # "*" for any other size
        (DALLE, Usage(1, 1, 1), "1024x1024", 0.04),  # tokens are not priced for it
        (None, Usage(1, 1, 1), "1024x1024", None),
    ],
)
def test_call_cost(
    price: Price | None, usage: Usage | None, size: str, expected: float | None
) -> None:
    assert call_cost(price, usage, size) == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
    ("price", "dearest", "expected"),
    [(GPT, None, 0.25), (GPT, 0.17, 0.17), (None, None, 0.0), (None, 0.3, 0.3)],
)
def test_call_estimate(price: Price | None, dearest: float | None, expected: float) -> None:
    assert call_estimate(price, dearest) == expected


@pytest.mark.parametrize(
    ("cap", "spent", "reserved", "estimate", "allowed"),
    [
        (1.0, 0.0, 0.0, 0.25, True),
        (1.0, 0.5, 0.25, 0.25, True),  # exactly at the cap
        (1.0, 0.5, 0.25, 0.26, False),
        (1.0, 0.9, 0.0, 0.2, False),
        (0.1, 0.0, 0.0, 0.25, False),  # even the first call would pass it
        (0.3, 0.1, 0.1, 0.1, True),  # float sums at the cap (0.30000000000000004)
    ],
)
def test_may_start(
    cap: float, spent: float, reserved: float, estimate: float, allowed: bool
) -> None:
    assert may_start(cap, spent, reserved, estimate) is allowed


class Obj:
    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (
            {
                "usage": {
                    "input_tokens": 372,
                    "input_tokens_details": {"text_tokens": 100, "image_tokens": 272},
                    "output_tokens": 4160,
                }
            },
            Usage(100, 272, 4160),
        ),
        (
            Obj(usage=Obj(input_tokens=50, input_tokens_details=None, output_tokens=10)),
            Usage(50, None, 10),
        ),
        ({"usage": {"input_tokens": -1, "output_tokens": "many"}}, None),
        ({"usage": {"input_tokens": 1.5, "output_tokens": True}}, None),
        ({"data": []}, None),
        (Obj(data=[]), None),
    ],
)
def test_images_usage(answer: Any, expected: Usage | None) -> None:
    assert images_usage(answer) == expected


def test_chat_usage() -> None:
    answer = {"usage": {"prompt_tokens": 300, "completion_tokens": 1300, "total_tokens": 1600}}
    assert chat_usage(answer) == Usage(300, None, 1300)
    assert chat_usage({}) is None


def test_settings_rows_replace_the_defaults_by_model() -> None:
    settings = Settings(
        _env_file=None, prices={"GPT-IMAGE-1": ModelPrice(output_per_mtok=1), "my-model": {}}
    )
    table = price_table(settings)
    assert table["gpt-image-1"] == Price(output_per_mtok=1)
    assert table["dall-e-3"].per_image["1024x1024"] == 0.04
    assert "my-model" in table
    defaults = price_table(Settings(_env_file=None))
    assert defaults["gpt-image-1"] == GPT


def test_the_cli_shows_tokens_and_cost() -> None:
    job = {
        "job_id": "j1",
        "status": "partially_failed",
        "usage": {
            "input_tokens": 744,
            "output_tokens": 8320,
            "estimated_cost_usd": 0.339,
            "max_cost": 0.4,
        },
        "skus": [{"sku": "SKU1", "usage": {"estimated_cost_usd": 0.339}}],
    }
    caption = cost_caption(job)
    assert caption.startswith("estimated cost $0.3390 of max_cost $0.4000, tokens in 744")
    assert "SKU1 $0.3390" in caption
    image = {
        "position": 0,
        "sku": "SKU1",
        "stem": "s1",
        "status": "succeeded",
        "attempts": 1,
        "result_url": "/r.png",
        "error": None,
        "usage": {"input_tokens": 372, "output_tokens": 4160, "estimated_cost_usd": 0.1695},
    }
    console = Console(width=200, record=True)
    console.print(summary_table(job, [image]))
    text = console.export_text()
    assert "4532" in text
    assert "$0.1695" in text


@pytest.mark.parametrize(
    ("size", "tokens"),
    [((1024, 1024), 4160), ((1024, 1536), 6240), ((1536, 1024), 6208), ((512, 512), 4160)],
)
def test_the_fake_provider_counts_output_tokens_by_size(size: tuple[int, int], tokens: int) -> None:
    assert output_tokens(size) == tokens
