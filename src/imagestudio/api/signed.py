"""Answers with their result URLs signed (API tokens set; ``security.signing``). Without a
signer (local mode) every answer is returned as it is."""

from __future__ import annotations

from typing import Any

from imagestudio.api.schemas import ImagePage, JobOut
from imagestudio.security.signing import UrlSigner


def signed_job(out: JobOut, signer: UrlSigner | None) -> JobOut:
    if signer is None:
        return out
    return out.model_copy(update={"result_image_urls": signer.sign_all(out.result_image_urls)})


def signed_page(page: ImagePage, signer: UrlSigner | None) -> ImagePage:
    if signer is None:
        return page
    images = [i.model_copy(update={"result_url": signer.sign(i.result_url)}) for i in page.images]
    return page.model_copy(update={"images": images})


def signed_event(data: Any, signer: UrlSigner | None) -> Any:
    """An event's data with its ``result_url`` signed (image events carry one)."""
    if signer is None or not isinstance(data, dict) or not data.get("result_url"):
        return data
    return data | {"result_url": signer.sign(data["result_url"])}
