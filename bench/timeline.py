"""Timeline charts of provider calls (the seed's "method 2", drawn): one PNG per run.

Every call the fake provider logged is a bar from its start to its end, in a *lane*: calls
are packed into the lowest free lane, so the number of lanes in use at a moment is the number
of calls in flight. A serial scheme is one lane of bars end to end; a concurrent one is a
stack. Colours: ok green, 429 orange, 500 red, other errors grey. A dashed line marks the
provider's concurrency limit ``C`` (lanes above it can only hold rejected calls), a vertical
line the lower bound on the makespan, shaded spans the scenario's limit events, and for
imagestudio runs a blue step line the governor's window W as it learned it.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from imagestudio.providers.fake.samples import load_font

WIDTH = 1200
LEFT, RIGHT, TOP, BOTTOM = 56, 20, 58, 36
PLOT_HEIGHT = (120, 420)  # min, max pixels for the lanes
BACKGROUND = (255, 255, 255)
GRID = (228, 228, 232)
TEXT = (30, 30, 36)
MUTED = (110, 110, 120)
COLOURS = {
    "ok": (46, 160, 67),
    "429": (245, 150, 30),
    "500": (214, 40, 40),
    "other": (140, 140, 150),
}
WINDOW = (40, 90, 220)
LIMIT = (120, 30, 160)
BOUND = (20, 20, 20)
EVENT = (255, 236, 200)


@dataclass
class Chart:
    title: str
    subtitle: str
    calls: Sequence[dict[str, Any]]  # the fake's call log: start, end, status (epoch seconds)
    origin: float  # epoch seconds of the run's start (x = 0)
    span: float  # seconds on the x axis (shared by the charts of one scenario)
    limit: Sequence[tuple[float, float | None]] = ()  # (from t, C) steps; None = no limit
    bound: float | None = None
    events: Sequence[tuple[float, float, str]] = ()  # shaded (from, to, label)
    window: Sequence[tuple[float, float]] = field(default_factory=list)  # (t, W) samples
    note: str = ""


def outcome(status: int | None) -> str:
    if status is not None and status < 300:
        return "ok"
    if status in (429, 500):
        return str(status)
    return "other"


def lanes(calls: Sequence[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """Each call with the lowest lane free at its start (interval partitioning)."""
    ordered = sorted(
        (c for c in calls if c.get("start") is not None), key=lambda c: (c["start"], c["id"])
    )
    busy: list[tuple[float, int]] = []  # (end, lane)
    free: list[int] = []
    placed: list[tuple[int, dict[str, Any]]] = []
    count = 0
    for call in ordered:
        while busy and busy[0][0] <= call["start"]:
            heapq.heappush(free, heapq.heappop(busy)[1])
        if free:
            lane = heapq.heappop(free)
        else:
            lane, count = count, count + 1
        end = call["end"] if call.get("end") is not None else call["start"]
        heapq.heappush(busy, (end, lane))
        placed.append((lane, call))
    return placed


def _ticks(span: float) -> float:
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300):
        if span / step <= 12:
            return float(step)
    return 600.0


def draw(chart: Chart, path: Path) -> None:
    placed = lanes(chart.calls)
    count = max([lane + 1 for lane, _ in placed] + [1])
    top_limit = max([c for _, c in chart.limit if c] + [0])
    rows = max(count, int(top_limit), *(int(w) + 1 for _, w in chart.window or [(0, 0)]))
    lane_px = max(1.0, min(18.0, PLOT_HEIGHT[1] / rows))
    plot_h = max(PLOT_HEIGHT[0], int(lane_px * rows))
    lane_px = plot_h / rows
    height = TOP + plot_h + BOTTOM
    image = Image.new("RGB", (WIDTH, height), BACKGROUND)
    d = ImageDraw.Draw(image)
    font, small = load_font(15), load_font(11)
    plot_w = WIDTH - LEFT - RIGHT
    span = max(chart.span, 1e-3)

    def x(t: float) -> float:
        return LEFT + plot_w * max(0.0, min(t, span)) / span

    def y(lane: float) -> float:  # lane 0 at the bottom
        return TOP + plot_h - lane * lane_px

    d.text((LEFT, 8), chart.title, font=font, fill=TEXT)
    d.text((LEFT, 30), chart.subtitle, font=small, fill=MUTED)
    for start, end, label in chart.events:
        d.rectangle(
            (x(start), TOP, x(end if end > start else start + span / 300), TOP + plot_h), fill=EVENT
        )
        d.text((x(start) + 3, TOP + 2), label, font=small, fill=MUTED)
    step = _ticks(span)
    t = 0.0
    while t <= span + 1e-9:
        d.line((x(t), TOP, x(t), TOP + plot_h), fill=GRID)
        d.text((x(t), TOP + plot_h + 4), f"{t:g}s", font=small, fill=MUTED, anchor="ma")
        t += step
    d.text((8, TOP + plot_h // 2), "calls\nin\nflight", font=small, fill=MUTED)
    _bars(d, placed, chart.origin, x, y, lane_px)
    # The provider's concurrency limit, as steps over time.
    for i, (since, limit) in enumerate(chart.limit):
        until = chart.limit[i + 1][0] if i + 1 < len(chart.limit) else span
        if limit:
            d.line((x(since), y(limit), x(until), y(limit)), fill=LIMIT, width=2)
            if i == 0 or chart.limit[i - 1][1] != limit:
                d.text((x(since) + 3, y(limit) - 13), f"C={limit:g}", font=small, fill=LIMIT)
    if chart.window:
        points = []
        for i, (t0, w) in enumerate(chart.window):
            t1 = chart.window[i + 1][0] if i + 1 < len(chart.window) else t0
            points += [(x(t0), y(w)), (x(t1), y(w))]
        d.line(points, fill=WINDOW, width=2)
    if chart.bound is not None and chart.bound <= span:
        for yy in range(TOP, TOP + plot_h, 8):
            d.line((x(chart.bound), yy, x(chart.bound), yy + 4), fill=BOUND, width=1)
        d.text((x(chart.bound) + 3, TOP + plot_h - 14), "lower bound", font=small, fill=BOUND)
    _legend(d, small, bool(chart.window), chart.note)
    d.rectangle((LEFT, TOP, LEFT + plot_w, TOP + plot_h), outline=GRID)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=True)


def _bars(
    d: ImageDraw.ImageDraw,
    placed: Sequence[tuple[int, dict[str, Any]]],
    origin: float,
    x: Any,
    y: Any,
    lane_px: float,
) -> None:
    for lane, call in placed:
        start = call["start"] - origin
        end = (call["end"] if call.get("end") is not None else call["start"]) - origin
        x0, x1 = x(start), max(x(end), x(start) + 1.5)
        if x1 - x0 > 4:  # a hairline gap, so calls end to end (serial) still read as calls
            x0 += 1
        y1 = y(lane)
        y0 = y1 - max(1.0, lane_px - (1 if lane_px >= 4 else 0))
        d.rectangle((x0, y0, x1, y1), fill=COLOURS[outcome(call.get("status"))])


def _legend(d: ImageDraw.ImageDraw, font: Any, window: bool, note: str) -> None:
    x = float(WIDTH - RIGHT)
    items = [("ok", COLOURS["ok"]), ("429", COLOURS["429"]), ("500", COLOURS["500"])]
    items.append(("C (provider)", LIMIT))
    if window:
        items.append(("W (governor)", WINDOW))
    for label, colour in reversed(items):
        width = d.textlength(label, font=font)
        x -= width + 6
        d.text((x, 32), label, font=font, fill=TEXT)
        x -= 14
        d.rectangle((x, 34, x + 10, 44), fill=colour)
        x -= 12
    if note:
        d.text((WIDTH - RIGHT, 10), note, font=font, fill=MUTED, anchor="ra")
