"""Payload builders for the tests and the benchmarks: the seed's shape, any size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from imagestudio.cli.example import SEED_TEMPLATES


def batch_payload(
    provider_url: str,
    job_id: str | None,
    *,
    images_per_sku: Sequence[int] = (3, 1, 1),
    api_key: str = "sk-test-key-0123456789",
    model: str = "gpt-image-1",
    user_id: str = "user-123",
    size: int = 1536,
    output_format: str = "png",
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``batch_series_generate`` payload shaped like the seed's, with sources served by the
    fake provider's ``/samples`` route. The seed's example is ``images_per_sku=(3, 1, 1)``."""
    skus = [f"SKU{i + 1}" for i in range(len(images_per_sku))]
    counter = iter(range(1, 1 + sum(images_per_sku)))
    sku_images_map = {}
    for sku, count in zip(skus, images_per_sku, strict=True):
        numbers = [next(counter) for _ in range(count)]
        sku_images_map[sku] = [
            {"url": f"{provider_url}/samples/{n}.jpg", "name": f"img{n}.jpg", "stem": f"stem{n}"}
            for n in numbers
        ]
    payload: dict[str, Any] = {
        "job_id": job_id,
        "user_id": user_id,
        "mode": "batch_series_generate",
        "sku": "__batch__",
        "stem": None,
        "options": {
            "skus": skus,
            "sku_images_map": sku_images_map,
            "settings": {
                "imageSize": f"{size}x{size}",
                "imageFormat": output_format,
                "quality": 90,
            },
            "api_key": api_key,
            "api_base": f"{provider_url}/v1",
            "model": model,
            "target_width": size,
            "target_height": size,
            "output_format": output_format,
            "use_english": False,
            "prompt_templates": dict(SEED_TEMPLATES),
        },
    }
    if job_id is None:
        del payload["job_id"]
    payload["options"].update(options or {})
    return payload
