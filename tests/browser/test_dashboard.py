"""The dashboard as a person uses it: jobs list, one job live over SSE, gallery, cancel and
retry by clicking, waiting reasons, the timeline chart, providers, tokens, keyboard."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Page, Route, expect

from .conftest import KEY, Service, sign_in

pytestmark = pytest.mark.timeout(240)
OUT = Path(__file__).resolve().parents[2] / "bench" / "out"
Shoot = Callable[[Page, str], None]


def test_jobs_list_filters_and_pages(page: Page, service: Service, shoot: Shoot) -> None:
    done = service.submit(images_per_sku=(2, 1))
    service.wait_ended(done)
    running = service.submit(images_per_sku=(8,), options={"max_concurrency": 1})
    sign_in(page, service)
    rows = page.locator("table.jobs tbody tr")
    expect(page.locator(f'tr[data-job="{done}"]')).to_contain_text("succeeded")
    expect(page.locator(f'tr[data-job="{running}"]')).to_contain_text(re.compile("running|queued"))
    assert rows.first.get_attribute("data-job") == running, "newest first"
    expect(page.locator(f'tr[data-job="{done}"] progress')).to_have_attribute("value", "3")
    shoot(page, "jobs")
    page.get_by_label("Status").select_option("succeeded")
    expect(page.locator(f'tr[data-job="{running}"]')).to_have_count(0)
    expect(page.locator(f'tr[data-job="{done}"]')).to_have_count(1)
    service.cancel(running)


def test_second_user_sees_none_of_the_first_users_jobs(
    page: Page, service: Service, shoot: Shoot
) -> None:
    mine = service.submit(images_per_sku=(1,))
    sign_in(page, service, "alice")
    expect(page.locator(f'tr[data-job="{mine}"]')).to_have_count(1)
    sign_in(page, service, "bob")
    expect(page.locator("table.jobs tbody")).to_contain_text("No jobs here.")
    expect(page.locator("table.jobs")).not_to_contain_text(mine)
    shoot(page, "second-user")
    page.goto(f"{service.url}/#/jobs/{mine}")
    expect(page.get_by_role("alert")).to_contain_text("no job")
    page.goto(f"{service.url}/#/providers")
    expect(page.locator("table.providers tbody")).to_contain_text("No provider keys yet.")


def test_running_job_bars_move_over_sse_and_gallery(
    page: Page, service: Service, shoot: Shoot
) -> None:
    job_id = service.submit(images_per_sku=(4, 4, 4), options={"max_concurrency": 2})
    sign_in(page, service, hash_=f"#/jobs/{job_id}")
    bar = page.get_by_label("job progress")
    expect(bar).to_be_visible()
    first = int(bar.get_attribute("value") or 0)
    state = page.locator("#sse-state")
    expect(state).to_have_text(re.compile(r"live: \d+ events"))
    page.wait_for_function(
        "([v]) => Number(document.querySelector('.summary progress').value) > v", arg=[first]
    )
    assert int(bar.get_attribute("value") or 0) > first
    assert int(state.get_attribute("data-sse-events") or 0) >= 1
    expect(page.locator(".sku")).to_have_count(3)
    shoot(page, "job-running")
    expect(state).to_have_text(re.compile("job ended: succeeded"), timeout=90_000)
    expect(bar).to_have_attribute("value", "12")
    expect(page.get_by_label("SKU SKU2 progress")).to_have_attribute("value", "4")
    cards = page.locator(".gallery .card")
    expect(cards).to_have_count(12)
    page.get_by_label("Jump to SKU").select_option(label="SKU3 (4)")
    expect(page.locator("#page-info")).to_contain_text(re.compile("images 9.12 of 12"))
    expect(cards.first).to_contain_text("SKU3")
    page.get_by_role("button", name="First").click()
    expect(page.locator("#page-info")).to_contain_text(re.compile("images 1.12 of 12"))
    expect(cards.first.locator("img").nth(1)).to_have_attribute("alt", re.compile("result"))
    page.wait_for_function(
        "() => [...document.querySelectorAll('.gallery img')]"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    cards.first.locator("details summary").click()
    expect(cards.first.locator(".prompt")).to_be_visible()
    shoot(page, "job-gallery")
    cards.nth(1).get_by_role("button").click()
    viewer = page.locator("#viewer")
    expect(viewer).to_be_visible()
    page.wait_for_function("() => document.getElementById('viewer-result').naturalWidth > 0")
    shoot(page, "image-viewer")
    page.keyboard.press("Escape")
    expect(viewer).to_be_hidden()
    with page.expect_download() as download:
        page.get_by_role("button", name="Download results (zip)").click()
    path = download.value.path()
    import zipfile

    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    assert len(names) == 12
    assert names[0].startswith("SKU1/stem1")


def first_event_id(service: Service, job_id: str) -> str:
    """The id of the job's first event with one, read from the real stream."""
    with (
        service.client() as c,
        c.stream("GET", f"/jobs/{job_id}/events", timeout=30) as answer,
    ):
        for line in answer.iter_lines():
            if line.startswith("id:"):
                return line.removeprefix("id:").strip()
    raise AssertionError("the stream ended without an event id")


def test_events_reconnect_and_resume_with_last_event_id(page: Page, service: Service) -> None:
    """The first stream breaks after one event (a proxy cutting it, played by the browser's
    router); the page reconnects with that event's id and follows the job to its end."""
    job_id = service.submit(images_per_sku=(8,), options={"max_concurrency": 1})
    seen = first_event_id(service, job_id)
    asked: list[str | None] = []

    def cut_first(route: Route) -> None:
        asked.append(route.request.headers.get("last-event-id"))
        if len(asked) == 1:
            body = f"id: {seen}\nevent: image\ndata: {{}}\n\n"
            route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body)
        else:
            route.continue_()

    page.route(re.compile(r".*/events$"), cut_first)
    sign_in(page, service, hash_=f"#/jobs/{job_id}")
    state = page.locator("#sse-state")
    expect(state).to_have_text(re.compile("job ended: succeeded"), timeout=60_000)
    assert asked[:2] == [None, seen], asked
    expect(page.get_by_label("job progress")).to_have_attribute("value", "8")


def test_waiting_reasons_and_cancel_by_clicking(page: Page, service: Service, shoot: Shoot) -> None:
    capped = service.submit(images_per_sku=(6,), options={"max_concurrency": 1})
    serial = service.submit(images_per_sku=(3, 3), options={"sku_serial": True})
    sign_in(page, service, hash_=f"#/jobs/{serial}")
    expect(page.locator(".waiting").first).to_contain_text(
        re.compile(r"SKU serial: waiting for stem\d")
    )
    page.goto(f"{service.url}/#/jobs/{capped}")
    waiting = page.locator(".card.st-queued .waiting").first
    expect(waiting).to_contain_text("per-job cap: 1/1 running")
    shoot(page, "waiting-reasons")
    page.get_by_role("button", name="Cancel job").click()
    expect(page.locator(".summary")).to_contain_text("cancelled")
    expect(page.get_by_role("button", name="Cancel job")).to_be_disabled()
    expect(page.locator(".card.st-queued")).to_have_count(0, timeout=15_000)
    assert service.job(capped)["counts"]["cancelled"] >= 1
    service.cancel(serial)


def test_retry_failed_by_clicking_asks_for_the_key(
    page: Page, service: Service, shoot: Shoot
) -> None:
    templates = {"common_cn": "生成产品图", "main_cn": "主图 [[refuse]]"}
    job_id = service.submit(
        images_per_sku=(2, 1), options={"prompt_templates": templates}
    )  # each SKU's first image is its main image: refused, fails for good
    job = service.wait_ended(job_id)
    assert job["status"] == "partially_failed"
    sign_in(page, service, hash_=f"#/jobs/{job_id}")
    expect(page.locator(".card.st-failed")).to_have_count(2)
    expect(page.locator(".card.st-failed .error-text").first).to_contain_text("moderation")
    page.get_by_role("button", name="Retry failed").click()
    key = page.get_by_label("Provider API key")
    expect(key).to_be_focused()
    shoot(page, "retry-asks-key")
    key.fill(KEY)
    page.get_by_role("button", name="Retry with this key").click()
    expect(page.locator(".note")).to_contain_text("2 image(s) queued again.")
    state = page.locator("#sse-state")
    expect(state).to_have_text(re.compile("live: "))  # following the retried images again
    expect(state).to_have_text(re.compile("job ended: partially_failed"), timeout=60_000)
    with service.client() as c:
        calls = c.get(f"/jobs/{job_id}/timeline").json()["calls"]
    assert sorted(call["position"] for call in calls if call["outcome"] == "failed") == [0, 0, 2, 2]


def test_timeline_chart_serial_and_concurrent(page: Page, service: Service, shoot: Shoot) -> None:
    serial = service.submit(images_per_sku=(5,), options={"max_concurrency": 1})
    concurrent = service.submit(images_per_sku=(10,))
    service.wait_ended(serial)
    service.wait_ended(concurrent)
    sign_in(page, service, hash_=f"#/jobs/{serial}/timeline")
    chart = page.locator("#timeline-chart")
    expect(chart).to_have_attribute("data-calls", "5")
    assert chart.get_attribute("data-peak") == "1", "a serial job has one call in flight"
    expect(page.locator("#timeline-facts")).to_contain_text("at most 1 in flight")
    expect(page.locator(".legend")).to_contain_text("429 snooze")
    shoot(page, "timeline-serial")
    page.goto(f"{service.url}/#/jobs/{concurrent}/timeline")
    expect(chart).to_have_attribute("data-calls", "10")
    assert int(chart.get_attribute("data-peak") or 0) > 1, "concurrent calls overlap"
    box = chart.bounding_box()
    assert box is not None
    x, y = (int(v) for v in (chart.get_attribute("data-first-bar") or "0,0").split(","))
    page.mouse.move(box["x"] + x, box["y"] + y)  # hover the first call's bar
    expect(page.locator(".tip")).to_contain_text(re.compile(r"attempt 1 · succeeded · \d"))
    shoot(page, "timeline-concurrent")
    page.locator("details summary", has_text="The calls as a table").click()
    expect(page.locator("details table tbody tr")).to_have_count(10)


def test_providers_page_never_shows_the_key(page: Page, service: Service, shoot: Shoot) -> None:
    service.wait_ended(service.submit(images_per_sku=(1,)))
    sign_in(page, service, hash_="#/providers")
    row = page.locator("table.providers tbody tr").first
    expect(row).to_contain_text(service.provider)
    expect(row).to_contain_text("gpt-image-1")
    assert KEY not in page.content()
    shoot(page, "providers")


def test_keyboard_focus_order_and_labels(page: Page, service: Service) -> None:
    sign_in(page, service)
    page.reload()  # focus starts at the top of the document
    page.locator("table.jobs").wait_for()
    order = []
    for _ in range(6):
        page.keyboard.press("Tab")
        order.append(
            page.evaluate(
                "() => document.activeElement.textContent.trim() || document.activeElement.id"
            )
        )
    assert order[:6] == [
        "Skip to content",
        "imagestudio",
        "Jobs",
        "Providers",
        "token",
        "Use token",
    ]
    for control in page.locator("input, select").all():
        ident = control.get_attribute("id")
        assert page.locator(f'label[for="{ident}"]').count() == 1, f"{ident} has no label"
    for button in page.get_by_role("button").all():
        assert (button.text_content() or button.get_attribute("aria-label") or "").strip()
    page.keyboard.press("Enter")  # on "Use token": the form submits from the keyboard
    expect(page.locator("#live")).to_contain_text(re.compile("token"))


def test_first_paint_of_a_5000_image_job(page: Page, service: Service) -> None:
    """Recorded in bench/out/first-paint-<db>.json, not asserted (docs/dashboard.md has the
    benchmark's figures): the job page's first contentful paint and the time until its first
    gallery page shows, while the job runs; the gallery pages through all 5,000."""
    job_id = service.submit(images_per_sku=(50,) * 100, options={"max_concurrency": 1})
    try:
        sign_in(page, service)
        started = time.monotonic()
        page.goto(f"{service.url}/#/jobs/{job_id}")
        page.reload()
        page.locator(".gallery .card").first.wait_for()
        shown = time.monotonic() - started
        fcp = page.evaluate(
            "() => (performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime"
        )
        expect(page.locator(".gallery .card")).to_have_count(24)
        expect(page.locator("#page-info")).to_contain_text("of 5000")
        page.get_by_role("button", name="Last").click()
        expect(page.locator("#page-info")).to_contain_text(re.compile("4993.5000 of 5000"))
        expect(page.locator(".card .waiting").last).to_contain_text("per-job cap: 1/1 running")
        page.goto(f"{service.url}/#/jobs/{job_id}/timeline")
        expect(page.locator("#timeline-facts")).to_contain_text("one row per slot")
        OUT.mkdir(parents=True, exist_ok=True)
        figures = {"first_contentful_paint_ms": fcp, "gallery_shown_s": round(shown, 3)}
        (OUT / f"first-paint-{service.backend}.json").write_text(json.dumps(figures))
    finally:
        service.cancel(job_id)
