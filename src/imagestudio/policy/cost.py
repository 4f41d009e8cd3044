"""Estimated cost of provider calls, and whether a job's budget lets the next call start (pure).

A ``Price`` is one model's row of the price table (``IMAGESTUDIO_PRICES``, defaults in
``settings.DEFAULT_PRICES``; docs/costs.md says where they come from and when): US dollars
per million input text, input image and output tokens, and a flat price per image by size for models
billed per image (``dall-e-*``). A call's cost is its tokens at those rates plus the flat
price; a call whose answer had no ``usage`` on a token-priced model costs the table's
``estimate`` (so the budget still counts it).

The budget (``max_cost``): before its call, an attempt reserves an estimate of what the call
will cost: the dearest call of the job so far, or the table's ``estimate`` before the first.
It may start only if what the job has spent, plus what running calls reserved, plus its own
estimate stays at or under ``max_cost``. So the job ends at or under its cap as long as no call
costs more than the estimate it reserved.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from imagestudio.domain import Usage

PER_MILLION = 1_000_000


@dataclass(frozen=True, slots=True)
class Price:
    text_input_per_mtok: float = 0.0
    image_input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    per_image: Mapping[str, float] = field(default_factory=dict)  # size -> USD, or "*"
    estimate: float = 0.0  # one call, before the job has seen one

    @property
    def by_tokens(self) -> bool:
        return bool(self.text_input_per_mtok or self.image_input_per_mtok or self.output_per_mtok)


def price_for(prices: Mapping[str, Price], model: str) -> Price | None:
    """The model's row: its exact name, else the longest name it starts with (a dated
    snapshot like ``gpt-image-1-2025-04-23`` takes ``gpt-image-1``'s); ``None`` if none."""
    name = model.lower().rsplit("/", 1)[-1]
    if name in prices:
        return prices[name]
    matches = [known for known in prices if name.startswith(known)]
    return prices[max(matches, key=len)] if matches else None


def call_cost(price: Price | None, usage: Usage | None, size: str) -> float | None:
    """The estimated cost of one call in USD; ``None`` for a model the table lacks."""
    if price is None:
        return None
    flat = price.per_image.get(size, price.per_image.get("*", 0.0))
    if not price.by_tokens:
        return round(flat, 8)
    if usage is None:
        return round(max(price.estimate, flat), 8)
    tokens = (
        (usage.input_text_tokens or 0) * price.text_input_per_mtok
        + (usage.input_image_tokens or 0) * price.image_input_per_mtok
        + (usage.output_tokens or 0) * price.output_per_mtok
    )
    return round(tokens / PER_MILLION + flat, 8)


def call_estimate(price: Price | None, dearest_so_far: float | None) -> float:
    """What the next call reserves of the budget: the dearest call so far, else the table's
    estimate (0 for a model the table lacks: its calls cannot be counted)."""
    if dearest_so_far is not None:
        return dearest_so_far
    return price.estimate if price is not None else 0.0


def may_start(max_cost: float, spent: float, reserved: float, estimate: float) -> bool:
    """Whether a call estimated at ``estimate`` keeps the job at or under ``max_cost``."""
    return spent + reserved + estimate <= max_cost + 1e-9


def budget_message(max_cost: float, spent: float, reserved: float, estimate: float) -> str:
    return (
        f"options.max_cost {max_cost:g} reached: spent {spent:.4f}, {reserved:.4f} reserved by "
        f"calls under way, the next call is estimated at {estimate:.4f}; no new calls started"
    )
