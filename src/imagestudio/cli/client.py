"""A small HTTP client for the CLI: submit a payload and follow a job with progress bars."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from imagestudio.domain import API_PREFIX, TERMINAL_JOB_STATUSES


class ApiClient:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def submit(self, payload: dict[str, Any]) -> httpx.Response:
        return self.http.post(f"{API_PREFIX}/jobs", json=payload)

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.http.get(f"{API_PREFIX}/jobs/{job_id}")
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def images(self, job_id: str, page_size: int = 5000) -> list[dict[str, Any]]:
        """Every image of the job, page after page (the route answers at most 5,000 a page)."""
        images: list[dict[str, Any]] = []
        offset: int | None = 0
        while offset is not None:
            response = self.http.get(
                f"{API_PREFIX}/jobs/{job_id}/images", params={"offset": offset, "limit": page_size}
            )
            response.raise_for_status()
            page: dict[str, Any] = response.json()
            images.extend(page["images"])
            offset = page["next_offset"]
        return images

    def jobs(self, *, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        response = self.http.get(f"{API_PREFIX}/jobs", params=params)
        response.raise_for_status()
        found: list[dict[str, Any]] = response.json()["jobs"]
        return found

    def image_page(self, job_id: str, *, offset: int = 0, limit: int = 500) -> dict[str, Any]:
        response = self.http.get(
            f"{API_PREFIX}/jobs/{job_id}/images", params={"offset": offset, "limit": limit}
        )
        response.raise_for_status()
        page: dict[str, Any] = response.json()
        return page

    def timeline(self, job_id: str, *, most: int = 20_000) -> list[dict[str, Any]]:
        """The job's calls by start, page after page, at most ``most``."""
        calls: list[dict[str, Any]] = []
        cursor: str | None = None
        while len(calls) < most:
            params: dict[str, Any] = {"limit": min(5000, most - len(calls))}
            if cursor:
                params["cursor"] = cursor
            response = self.http.get(f"{API_PREFIX}/jobs/{job_id}/timeline", params=params)
            response.raise_for_status()
            page: dict[str, Any] = response.json()
            calls.extend(page["calls"])
            cursor = page["next_cursor"]
            if not cursor:
                break
        return calls


def waiting_summary(images: list[dict[str, Any]], most: int = 2) -> str:
    """The commonest waiting reasons among ``images``, with how many images each holds."""
    counts = Counter(i["waiting_reason"] for i in images if i.get("waiting_reason"))
    return "; ".join(f"{reason} (x{n})" for reason, n in counts.most_common(most))


def _done(counts: dict[str, int]) -> int:
    return counts["succeeded"] + counts["failed"] + counts["cancelled"]


def follow(
    client: ApiClient, job_id: str, console: Console, interval: float = 0.25
) -> dict[str, Any]:
    """Show one bar for the job and one per SKU until the job ends; return the final job."""
    job = client.job(job_id)
    columns = (
        TextColumn("{task.description:<24}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[state]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        overall = progress.add_task(f"job {job_id[:20]}", total=job["counts"]["total"], state="")
        bars = {
            sku["sku"]: progress.add_task(f"  {sku['sku'][:22]}", total=sku["total"], state="")
            for sku in job["skus"]
        }
        why = progress.add_task("  waiting", total=None, state="", visible=False)
        polls = 0
        said = ""
        while True:
            counts = job["counts"]
            spent = _usd((job.get("usage") or {}).get("estimated_cost_usd"))
            progress.update(overall, completed=_done(counts), state=f"{job['status']} {spent}")
            for sku in job["skus"]:
                state = f"{sku['running']} running" if sku["running"] else ""
                progress.update(bars[sku["sku"]], completed=_done(sku), state=state)
            if job["status"] in TERMINAL_JOB_STATUSES:
                progress.update(why, visible=False)
                return job
            if polls % 4 == 0 and counts["queued"]:  # why the queued ones wait, now and then
                reasons = waiting_summary(client.image_page(job_id, limit=500)["images"])
                progress.update(why, visible=bool(reasons), state=reasons[:110])
                if reasons and reasons != said and not console.is_terminal:
                    console.print(f"waiting: {reasons}")  # no live bars: say it once a change
                said = reasons
            elif not counts["queued"]:
                progress.update(why, visible=False)
            polls += 1
            time.sleep(interval)
            job = client.job(job_id)


def _usd(value: Any) -> str:
    return f"${float(value or 0):.4f}"


def cost_caption(job: dict[str, Any]) -> str:
    """The job's tokens and estimated cost, then each SKU's (``GET /jobs/{id}``'s usage)."""
    usage = job.get("usage") or {}
    cap = usage.get("max_cost")
    parts = [
        f"estimated cost {_usd(usage.get('estimated_cost_usd'))}"
        + (f" of max_cost {_usd(cap)}" if cap is not None else "")
        + f", tokens in {usage.get('input_tokens', 0)} / out {usage.get('output_tokens', 0)}"
    ]
    for sku in job.get("skus", []):
        if sku.get("usage"):
            parts.append(f"{sku['sku']} {_usd(sku['usage']['estimated_cost_usd'])}")
    return "; ".join(parts)


def summary_table(job: dict[str, Any], images: list[dict[str, Any]]) -> Table:
    table = Table(title=f"job {job['job_id']}: {job['status']}", caption=cost_caption(job))
    for column in ("#", "sku", "stem", "status", "attempts", "tokens", "cost", "result / error"):
        table.add_column(column)
    for image in images:
        outcome = image["result_url"] or image["error"] or ""
        usage = image.get("usage") or {}
        tokens = usage.get("input_tokens", 0) + usage.get("output_tokens", 0)
        table.add_row(
            str(image["position"] + 1),
            image["sku"],
            image["stem"],
            image["status"],
            str(image["attempts"]),
            str(tokens),
            _usd(usage.get("estimated_cost_usd")),
            outcome,
        )
    return table
