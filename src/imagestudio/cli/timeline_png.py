"""``imagestudio timeline JOB --png FILE``: the timeline chart drawn with Pillow, as the
dashboard draws it: calls in flight against the key's window on top, one row per image (or
per slot) below, each outcome a colour AND a hatch, with a labelled legend."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from imagestudio.cli.views import Span, in_flight

COLOURS = {
    "succeeded": (46, 125, 50),
    "retry": (239, 108, 0),
    "snoozed": (106, 27, 154),
    "failed": (198, 40, 40),
    "lost": (84, 110, 122),
    "cancelled": (55, 71, 79),
    "released": (144, 164, 174),
    "running": (21, 101, 192),
}
HATCH = {
    "retry": "/",
    "snoozed": ".",
    "failed": "x",
    "lost": "-",
    "cancelled": "|",
    "released": "-",
}
LABELS = {
    "succeeded": "succeeded",
    "retry": "retry",
    "snoozed": "429 snooze",
    "failed": "failed",
    "lost": "lost",
    "cancelled": "cancelled",
    "released": "released",
    "running": "running",
}
LEFT, TOP, ROW, WIDTH = 110, 130, 14, 1100


def _hatch(d: ImageDraw.ImageDraw, box: tuple[int, int, int, int], kind: str) -> None:
    x0, y0, x1, y1 = box
    white = (255, 255, 255)
    if kind == "/":
        h = y1 - y0
        for x in range(x0, x1 - h, 6):
            d.line([(x, y1), (x + h, y0)], fill=white)
    elif kind == "x":
        for x in range(x0, x1, 8):
            d.line([(x, y0), (min(x + 6, x1), y1)], fill=white)
            d.line([(x, y1), (min(x + 6, x1), y0)], fill=white)
    elif kind == ".":
        for x in range(x0 + 2, x1, 5):
            d.point((x, (y0 + y1) // 2), fill=white)
    elif kind == "-":
        d.line([(x0, (y0 + y1) // 2), (x1, (y0 + y1) // 2)], fill=white)
    elif kind == "|":
        for x in range(x0 + 2, x1, 5):
            d.line([(x, y0), (x, y1)], fill=white)


def draw(found: Sequence[Span], job: dict[str, Any], path: Path, *, by_image: bool) -> None:
    rows = max((s.row for s in found), default=0) + 1
    height = TOP + 20 + rows * ROW + 60
    img = Image.new("RGB", (WIDTH, height), "white")
    d = ImageDraw.Draw(img)
    end = max((s.end for s in found), default=1.0) or 1.0
    plot = WIDTH - LEFT - 20

    def x(t: float) -> int:
        return LEFT + round(t / end * plot)

    window = (job.get("governor") or {}).get("window")
    samples = [in_flight(found, end * (k + 0.5) / plot) for k in range(plot)]
    top = max(max(samples, default=0), window or 0, 1)

    def y(n: float) -> int:
        return TOP - 20 - round(n / top * (TOP - 40))

    d.text((8, 8), f"job {job['job_id']}: AI calls in flight and every attempt", fill="black")
    d.text((8, y(top) - 6), f"{top:g}", fill="black")
    d.text((8, y(0) - 6), "0 in flight", fill="black")
    d.line([(LEFT, y(0)), (WIDTH - 20, y(0))], fill=(180, 180, 180))
    if window:
        for x0 in range(LEFT, WIDTH - 20, 10):
            d.line([(x0, y(window)), (x0 + 5, y(window))], fill=COLOURS["failed"])
        d.text(
            (WIDTH - 170, y(window) - 14), f"key's window now {window:.1f}", fill=COLOURS["failed"]
        )
    d.line([(LEFT + k, y(n)) for k, n in enumerate(samples)], fill=COLOURS["running"], width=2)
    for k in range(6):
        t = end * k / 5
        d.text((x(t) - 10, TOP - 12), f"{t:.1f}s", fill="black")
    names = {s.row: s.label for s in found}
    for s in found:
        y0 = TOP + 10 + s.row * ROW
        box = (x(s.start), y0, max(x(s.start) + 2, x(s.end)), y0 + ROW - 3)
        d.rectangle(box, fill=COLOURS.get(s.outcome, COLOURS["running"]))
        if s.outcome in HATCH:
            _hatch(d, box, HATCH[s.outcome])
    for row in range(rows):
        label = names.get(row, "") if by_image else f"slot {row + 1}"
        d.text((8, TOP + 10 + row * ROW), label[:16], fill="black")
    lx, ly = LEFT, height - 40
    for kind, label in LABELS.items():
        box = (lx, ly, lx + 24, ly + 11)
        d.rectangle(box, fill=COLOURS[kind], outline="black")
        if kind in HATCH:
            _hatch(d, box, HATCH[kind])
        d.text((lx + 30, ly), label, fill="black")
        lx += 36 + 8 * len(label)
    img.save(path, format="PNG")
