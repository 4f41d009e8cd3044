"""What ``imagestudio jobs``, ``show`` and ``timeline`` print: rich tables, per-SKU bars, and
the AI-call timeline as a text chart (each outcome its own character, so colour is never the
only cue). Built from the API's JSON answers only (no server import)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

# outcome -> (character, colour, label)
OUTCOMES: dict[str, tuple[str, str, str]] = {
    "succeeded": ("█", "green", "succeeded"),
    "retry": ("r", "dark_orange", "retry (error, backed off)"),
    "snoozed": ("z", "magenta", "429 snooze"),
    "failed": ("x", "red", "failed"),
    "lost": ("l", "grey50", "lost (worker died)"),
    "cancelled": ("c", "grey37", "cancelled"),
    "released": ("-", "grey62", "released (worker stopped)"),
    "running": ("▒", "blue", "running"),
}
SPARK = " ▁▂▃▄▅▆▇█"
MAX_IMAGE_ROWS = 40


def _done(c: dict[str, int]) -> int:
    return int(c["succeeded"]) + int(c["failed"]) + int(c["cancelled"])


def jobs_table(jobs: Sequence[dict[str, Any]]) -> Table:
    table = Table(title="jobs, newest first")
    for column in ("job", "status", "done", "succeeded", "failed", "created", "error"):
        table.add_column(column)
    for j in jobs:
        c = j["counts"]
        table.add_row(
            j["job_id"],
            j["status"],
            f"{_done(c)}/{c['total']}",
            str(c["succeeded"]),
            str(c["failed"]),
            j["created_at"][:19].replace("T", " "),
            (j["error"] or "")[:60],
        )
    return table


def _bar_row(table: Table, name: str, c: dict[str, Any]) -> None:
    total = max(1, int(c["total"]))
    extra = f" · {c['running']} running" if c["running"] else ""
    extra += f" · {c['failed']} failed" if c["failed"] else ""
    table.add_row(
        name,
        ProgressBar(total=total, completed=_done(c), width=40),
        f"{_done(c)}/{c['total']}{extra}",
    )


def show_job(job: dict[str, Any], images: Sequence[dict[str, Any]], total: int) -> Group:
    """The job's summary, one bar per SKU, and its images (the first page) with reasons."""
    c = job["counts"]
    head = Table.grid(padding=(0, 2))
    head.add_row("job", job["job_id"])
    head.add_row("status", job["status"])
    head.add_row("counts", ", ".join(f"{k} {c[k]}" for k in c if k != "total"))
    head.add_row("provider", f"{job['provider']['model']} at {job['provider']['api_base']}")
    if job["error"]:
        head.add_row("error", job["error"])
    bars = Table(title="progress", show_header=False, box=None)
    bars.add_column("sku")
    bars.add_column("bar")
    bars.add_column("count")
    _bar_row(bars, "job", c)
    for sku in job["skus"]:
        _bar_row(bars, sku["sku"], sku)
    rows = Table(title=f"images (first {len(images)} of {total})")
    for column in ("#", "sku", "stem", "status", "attempts", "result / error / why waiting"):
        rows.add_column(column)
    for i in images:
        said = i["result_url"] or i["error"] or i.get("waiting_reason") or ""
        rows.add_row(
            str(i["position"] + 1), i["sku"], i["stem"], i["status"], str(i["attempts"]), said
        )
    return Group(head, bars, rows)


@dataclass(frozen=True)
class Span:
    row: int
    start: float  # seconds from the first call's start
    end: float
    outcome: str
    label: str


def spans(calls: Sequence[dict[str, Any]], total_images: int, now: datetime) -> list[Span]:
    """Each call as a bar: its row (the image, or a slot for jobs over ``MAX_IMAGE_ROWS``
    images: the first lane free when it started) and its times."""
    times = []
    for call in calls:
        start = datetime.fromisoformat(call.get("call_start") or call["start"])
        ended = call.get("call_end") or call.get("end")
        end = datetime.fromisoformat(ended) if ended else now
        times.append((start, max(end, start)))
    if not times:
        return []
    t0 = min(s for s, _ in times)
    by_image = total_images <= MAX_IMAGE_ROWS
    lanes: list[float] = []
    out = []
    for call, (start, end) in zip(calls, times, strict=True):
        s, e = (start - t0).total_seconds(), (end - t0).total_seconds()
        if by_image:
            row = int(call["position"])
        else:
            free = next((n for n, busy_until in enumerate(lanes) if busy_until <= s), None)
            if free is None:
                row = len(lanes)
                lanes.append(e)
            else:
                row = free
                lanes[row] = e
        outcome = call.get("outcome") or "running"
        out.append(Span(row, s, e, outcome, f"{call['sku']}/{call['stem']}"))
    return out


def in_flight(found: Sequence[Span], at: float) -> int:
    return sum(1 for s in found if s.start <= at < s.end)


def text_timeline(
    calls: Sequence[dict[str, Any]],
    job: dict[str, Any],
    *,
    width: int = 72,
    now: datetime,
) -> RenderableType:
    found = spans(calls, int(job["counts"]["total"]), now)
    if not found:
        return Text("no calls yet")
    end = max(s.end for s in found) or 1.0
    step = end / width
    window = (job.get("governor") or {}).get("window")
    flight = [in_flight(found, (k + 0.5) * step) for k in range(width)]
    top = max(max(flight), window or 0, 1)
    lines = Text()
    spark = "".join(SPARK[min(8, round(n / top * 8))] for n in flight)
    lines.append(f"{'in flight':>14} ", style="bold")
    lines.append(spark + "\n", style="blue")
    told = f"peak {max(flight)} in flight"
    if window:
        told += f", key's window now {window:.1f}"
    lines.append(f"{'':>14} {told}; 0 .. {end:.1f} s, {step:.2f} s a character\n")
    by_image = int(job["counts"]["total"]) <= MAX_IMAGE_ROWS
    names = {s.row: s.label for s in found} if by_image else {}
    for row in range(max(s.row for s in found) + 1):
        cells = [" "] * width
        styles = [""] * width
        for s in (x for x in found if x.row == row):
            char, colour, _ = OUTCOMES.get(s.outcome, OUTCOMES["running"])
            first, last = int(s.start / step), max(int(s.start / step), int(s.end / step) - 1)
            for k in range(first, min(last, width - 1) + 1):
                cells[k], styles[k] = char, colour
        name = names.get(row, f"#{row + 1}") if by_image else f"slot {row + 1}"
        lines.append(f"{name[:14]:>14} ")
        for char, style in zip(cells, styles, strict=True):
            lines.append(char, style=style or None)
        lines.append("\n")
    lines.append("legend: " + ", ".join(f"{c} {label}" for c, _, label in OUTCOMES.values()))
    return lines
