"""The scale benchmark's markdown tables."""

from __future__ import annotations

from collections.abc import Sequence

from bench.scale.intake import IntakeRun
from bench.scale.queue import QueueRun, percentile
from bench.scale.workers import FleetRun

BACKENDS = ("sqlite", "postgresql")
NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


def num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}x" if value is not None and base else "-"


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:,.0f}" if value >= 0.1 else f"{value * 1000:.1f}"


def _failed(run: QueueRun | IntakeRun | FleetRun | None) -> str | None:
    if run is None:
        return "not run"
    return f"**failed**: {run.error}" if run.error else None


def _cell(run: QueueRun | None) -> str:
    problem = _failed(run)
    if problem is not None or run is None:
        return "failed" if run is not None else "not run"
    cut = f" (cut: {run.completions} in {run.window:.0f} s)" if run.cut else ""
    return num(run.per_second, 2) + cut


def queue_tables(runs: Sequence[QueueRun], depths: Sequence[int]) -> list[str]:
    by = {(r.backend, r.depth, r.shape.users > 1): r for r in runs}
    base = {(b, many): by.get((b, depths[0], many)) for b in BACKENDS for many in (False, True)}
    lines = [
        "### 1. Images/s by queue depth (zero-latency fake, 64x64 jpeg, one worker, in process)",
        "",
        "| queued | shape | SQLite images/s | vs first row | PostgreSQL images/s | vs first row |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    claims = [
        "### 3. Claim latency by queue depth (`Store.claim_batch`, limit 8, tasks released)",
        "",
        "| queued | shape | SQLite p50 ms | SQLite p99 ms | n | PostgreSQL p50 ms "
        "| PostgreSQL p99 ms | n | worker's claims under load, p50 ms (SQLite / PostgreSQL) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes: list[str] = []
    for depth in depths:
        for many in (False, True):
            row = [by.get((b, depth, many)) for b in BACKENDS]
            shape = next((r.shape.label for r in row if r is not None), "?")
            cells = [f"{depth:,}", shape]
            claim_cells = [f"{depth:,}", shape]
            for backend, run in zip(BACKENDS, row, strict=True):
                first = base[(backend, many)]
                ok = run is not None and run.error is None
                cells += [
                    _cell(run),
                    ratio(run.per_second, first.per_second) if ok and run and first else "-",
                ]
                c = run.claims if run else []
                claim_cells += [ms(percentile(c, 0.5)), ms(percentile(c, 0.99)), str(len(c))]
                problem = _failed(run)
                if problem:
                    notes.append(f"- {NAMES[backend]}, {depth:,} queued, {shape}: {problem}")
            lines.append(f"| {' | '.join(cells)} |")
            load = " / ".join(ms(percentile(r.worker_claims, 0.5)) if r else "-" for r in row)
            claims.append(f"| {' | '.join(claim_cells)} | {load} |")
    seeds = [
        f"{NAMES[r.backend]} {r.depth:,} {r.shape.label}: {r.seed_seconds:.1f} s"
        for r in runs
        if r.seed_seconds
    ]
    tail = ["", "Filling the queues through `JobService.submit`: " + "; ".join(seeds) + "."]
    return [*lines, "", *notes, *claims, *tail, ""] if notes else [*lines, "", *claims, *tail, ""]


def intake_table(runs: Sequence[IntakeRun]) -> list[str]:
    lines = [
        "### 2. Intake time and server memory by job size (`POST` to `imagestudio serve`)",
        "",
        "| database | images | body MiB | s to 201 | RSS idle MiB | RSS after 201 "
        "| RSS running (peak) | VmHWM | done while sampled |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for run in runs:
        problem = _failed(run)
        if problem:
            notes.append(f"- {NAMES[run.backend]}, {run.images:,} images: {problem}")
        lines.append(
            f"| {NAMES[run.backend]} | {run.images:,} | {run.body_mib:.2f} | {num(run.seconds, 2)} "
            f"| {run.rss_idle:.0f} | {run.rss_accepted:.0f} | {run.rss_running:.0f} "
            f"| {run.hwm:.0f} | {run.done_while_running:,} |"
        )
    lines.append("")
    for backend in BACKENDS:
        mine = [r for r in runs if r.backend == backend and r.error is None and r.rss_running]
        if len(mine) >= 2:
            small, big = min(mine, key=lambda r: r.images), max(mine, key=lambda r: r.images)
            lines.append(
                f"- {NAMES[backend]}: RSS while running {big.images:,} vs {small.images:,}: "
                f"{ratio(big.rss_running, small.rss_running)} (VmHWM {ratio(big.hwm, small.hwm)}); "
                f"seconds to 201 {ratio(big.seconds, small.seconds)} for "
                f"{big.images / small.images:.0f}x the images."
            )
    return [*lines, *notes, ""]


def fleet_table(runs: Sequence[FleetRun], cores: int) -> list[str]:
    lines = [
        "### 4. Worker processes on PostgreSQL (one job, zero-latency fake, "
        "`imagestudio worker` subprocesses)",
        "",
        "| processes | images done | wall s | images/s | vs 1 process | steady images/s "
        "| CPU s: workers | PostgreSQL backends | fake provider | cores busy (of "
        f"{cores}) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    one = next((r for r in runs if r.processes == 1 and r.error is None), None)
    base = one.per_second if one else None
    notes = []
    for run in runs:
        problem = _failed(run)
        if problem:
            notes.append(f"- {run.processes} process(es): {problem}")
            lines.append(f"| {run.processes} | failed | | | | | | | | |")
            continue
        cpu = run.worker_cpu + run.db_cpu + run.provider_cpu
        cut = " (cut)" if run.cut else ""
        lines.append(
            f"| {run.processes} | {run.done:,} of {run.images:,}{cut} | {run.wall:.1f} "
            f"| {num(run.per_second, 1)} | {ratio(run.per_second, base)} "
            f"| {num(run.steady, 1)} | {run.worker_cpu:.0f} | {run.db_cpu:.0f} "
            f"| {run.provider_cpu:.0f} | {cpu / run.wall if run.wall else 0:.2f} |"
        )
    return [*lines, "", *notes, ""]
