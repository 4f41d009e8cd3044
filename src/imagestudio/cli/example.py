"""The seed's example job, pointed at a provider: what ``imagestudio demo`` submits.

Three SKUs with five source photos (3 + 1 + 1), 1536x1536 png at quality 90, the seed's
Chinese prompt templates. The sources are the fake provider's ``/samples`` photos, so the
demo needs no network; the model is ``gpt-image-1`` (the seed names a chat-vision model,
which does not return images).
"""

from __future__ import annotations

from typing import Any

SEED_TEMPLATES = {
    "common_cn": "根据图片内容生成电商产品图, 保持产品外观不变",
    "main_cn": "主图: 纯白背景, 产品居中",
    "opt_remove_watermark_cn": "去除水印",
}

SEED_SKUS = {"SKU1": (1, 2, 3), "SKU2": (4,), "SKU3": (5,)}


def seed_example(provider_url: str, job_id: str, api_key: str) -> dict[str, Any]:
    """The seed's payload with its image URLs served by the fake provider at ``provider_url``."""
    images = {
        sku: [
            {"url": f"{provider_url}/samples/{n}.jpg", "name": f"img{n}.jpg", "stem": f"stem{n}"}
            for n in numbers
        ]
        for sku, numbers in SEED_SKUS.items()
    }
    return {
        "job_id": job_id,
        "user_id": "user-123",
        "mode": "batch_series_generate",
        "sku": "__batch__",
        "stem": None,
        "options": {
            "skus": list(SEED_SKUS),
            "sku_images_map": images,
            "settings": {"imageSize": "1536x1536", "imageFormat": "png", "quality": 90},
            "api_key": api_key,
            "api_base": f"{provider_url}/v1",
            "model": "gpt-image-1",
            "target_width": 1536,
            "target_height": 1536,
            "output_format": "png",
            "use_english": False,
            "prompt_templates": dict(SEED_TEMPLATES),
        },
    }
