"""Usage and estimated cost as column values: an attempt records its call's, its image and its
job add them to their sums, in the UPDATEs ``outcomes.finish`` makes anyway (no extra
statement, no read of the attempts: a job's cost is kept, not summed, and equals the sum of
its attempts'). The image's budget reservation (``store.budget``) ends with the attempt.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, func

from imagestudio.store.records import Spend
from imagestudio.store.tables import ai_job, ai_job_image


def attempt_values(spend: Spend | None) -> dict[str, Any]:
    if spend is None:
        return {}
    values: dict[str, Any] = {"cost": spend.cost}
    if spend.usage is not None:
        values |= {
            "input_text_tokens": spend.usage.input_text_tokens,
            "input_image_tokens": spend.usage.input_image_tokens,
            "output_tokens": spend.usage.output_tokens,
        }
    return values


def _deltas(spend: Spend | None) -> tuple[int, int, float]:
    if spend is None:
        return 0, 0, 0.0
    used = spend.usage
    tokens_in = used.input_tokens if used is not None else 0
    tokens_out = (used.output_tokens or 0) if used is not None else 0
    return tokens_in, tokens_out, spend.cost or 0.0


def image_sums(spend: Spend | None) -> dict[str, Any]:
    """The image's sums grow by the call's; its reservation ends either way."""
    img = ai_job_image
    values: dict[str, Any] = {"cost_reserved": None}
    tokens_in, tokens_out, cost = _deltas(spend)
    if spend is not None:
        values |= {
            "input_tokens": img.c.input_tokens + tokens_in,
            "output_tokens": img.c.output_tokens + tokens_out,
            "cost": img.c.cost + cost,
        }
    return values


def job_sums(spend: Spend | None) -> dict[str, Any]:
    """The job's sums grow by the call's; ``cost_call_max`` keeps the dearest call."""
    if spend is None:
        return {}
    job = ai_job
    tokens_in, tokens_out, cost = _deltas(spend)
    values: dict[str, Any] = {
        "input_tokens": job.c.input_tokens + tokens_in,
        "output_tokens": job.c.output_tokens + tokens_out,
        "cost": job.c.cost + cost,
    }
    if spend.cost is not None:
        dearest = func.coalesce(job.c.cost_call_max, 0.0)
        values["cost_call_max"] = case((dearest < cost, cost), else_=job.c.cost_call_max)
    return values
