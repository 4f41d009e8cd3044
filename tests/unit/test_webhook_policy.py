"""Webhooks, pure: which outbox events make which messages, the retry schedule and when a
message is given up, the URL as shown, the secret's format, and intake of the options."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from imagestudio.errors import PayloadInvalid
from imagestudio.jobs.intake import IntakeLimits, build_job_spec, parse_payload
from imagestudio.policy.webhooks import (
    GiveUp,
    RetryPlan,
    TryAgain,
    after_failure,
    message_id,
    message_type,
    shown_url,
)
from imagestudio.security.webhook_secret import webhook_secret_problem
from testkit.payloads import batch_payload
from testkit.webhook_receiver import whsec

T0 = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("kind", "data", "image_events", "expected"),
    [
        ("image", {"status": "running"}, True, []),
        ("image", {"status": "succeeded", "job_status": "running"}, False, []),
        ("image", {"status": "succeeded", "job_status": "running"}, True, ["image.succeeded"]),
        ("image", {"status": "queued", "job_status": "running"}, True, []),  # a retry
        (
            "image",
            {"status": "failed", "job_status": "partially_failed", "job_ended": True},
            True,
            ["image.failed", "job.partially_failed"],
        ),
        (
            "image",
            {"status": "succeeded", "job_status": "succeeded", "job_ended": True},
            False,
            ["job.succeeded"],
        ),
        # a late finish after the job ended says the job's status but did not end it
        ("image", {"status": "succeeded", "job_status": "cancelled"}, False, []),
        (
            "job",
            {"status": "cancelled", "action": "cancel", "job_ended": True},
            True,
            ["job.cancelled"],
        ),
        ("job", {"status": "running", "action": "cancel"}, True, []),
        ("job", {"status": "queued", "action": "retry", "requeued": 2}, True, []),
    ],
)
def test_message_type(
    kind: str, data: dict[str, Any], image_events: bool, expected: list[str]
) -> None:
    assert message_type(kind, data, image_events=image_events) == expected


def test_message_ids_are_stable_and_distinct() -> None:
    assert message_id(10, "job.succeeded") == "msg_10_job_succeeded"
    assert message_id(10, "image.failed") != message_id(10, "job.failed")


def test_the_retry_schedule_grows_x4_to_10_hours_within_jitter() -> None:
    plan = RetryPlan(base=5.0, max_age=10 * 86400)
    rng = random.Random(1)
    delays = []
    for attempt in range(1, 10):
        decision = after_failure(attempt, T0, T0, plan, rng)
        assert isinstance(decision, TryAgain)
        delays.append((decision.at - T0).total_seconds())
    nominal = [5, 20, 80, 320, 1280, 5120, 20480, 36000, 36000]
    for delay, expected in zip(delays, nominal, strict=True):
        assert 0.8 * expected <= delay <= 1.2 * expected


def test_a_message_is_given_up_once_its_next_try_would_be_past_a_day() -> None:
    plan, rng = RetryPlan(), random.Random(2)
    now, attempts = T0, 0
    while True:
        attempts += 1
        decision = after_failure(attempts, T0, now, plan, rng)
        if isinstance(decision, GiveUp):
            break
        assert (decision.at - T0) <= timedelta(days=1)
        now = decision.at
    assert 8 <= attempts <= 12
    assert "given up after" in decision.reason


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.example.com/in?token=abc#x", "https://hooks.example.com/in"),
        ("https://user:pw@hooks.example.com:8443/in", "https://hooks.example.com:8443/in"),
        ("http://[::1]:9/h?k=v", "http://[::1]:9/h"),
        ("http://[bad", "(invalid URL)"),
    ],
)
def test_shown_url(url: str, shown: str) -> None:
    assert shown_url(url) == shown


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        (whsec(1), None),
        ("whsec_" + "A" * 43, None),  # unpadded base64 of 32 bytes
        ("sk_live_123", "must start with 'whsec_'"),
        ("whsec_@@@@", "followed by base64"),
        ("whsec_c2hvcnQ=", "24 to 64 bytes"),
    ],
)
def test_webhook_secret_problem(secret: str, problem: str | None) -> None:
    found = webhook_secret_problem(secret)
    assert (found is None) if problem is None else (found is not None and problem in found)
    if found is not None:
        assert secret not in found


def spec(**options: Any) -> Any:
    raw = batch_payload("https://cdn.example.com", "j", options=options)
    return build_job_spec(parse_payload(raw), user_id="u", limits=IntakeLimits())


def test_intake_keeps_secrets_out_of_config() -> None:
    secret = whsec(5)
    built = spec(
        webhook_url="https://hooks.example.com/in?token=abc",
        webhook_secret=secret,
        webhook_image_events=True,
        max_cost=2.5,
    )
    assert built.webhook.url == "https://hooks.example.com/in?token=abc"
    assert built.webhook.secret == secret
    assert built.webhook.image_events is True
    assert built.max_cost == 2.5
    options = built.config["options"]
    assert "webhook_secret" not in options
    assert options["webhook_url"] == "https://hooks.example.com/in"
    assert secret not in str(built.config)
    assert "abc" not in str(built.config)


def test_intake_without_a_webhook() -> None:
    built = spec()
    assert (built.webhook, built.max_cost) == (None, None)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"max_cost": 0}, "options.max_cost"),
        ({"max_cost": -1}, "options.max_cost"),
        ({"max_cost": "lots"}, "options.max_cost"),
        ({"webhook_url": "ftp://x.example.com/"}, "options.webhook_url"),
        ({"webhook_url": "https://a:b@x.example.com/"}, "options.webhook_url"),
        ({"webhook_secret": whsec(1)}, "options.webhook_url"),
        (
            {"webhook_url": "https://x.example.com/", "webhook_secret": "nope"},
            "options.webhook_secret",
        ),
    ],
)
def test_intake_refusals_name_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(PayloadInvalid) as caught:
        spec(**options)
    assert caught.value.field == field


def test_a_malformed_server_secret_stops_the_start() -> None:
    from imagestudio.errors import ImageStudioError
    from imagestudio.runtime.services import sender_config
    from imagestudio.settings import Settings

    good = sender_config(Settings(_env_file=None, webhook_secret=whsec(9)))
    assert good.server_secret == whsec(9)
    with pytest.raises(ImageStudioError, match="IMAGESTUDIO_WEBHOOK_SECRET must start with"):
        sender_config(Settings(_env_file=None, webhook_secret="plain-text-secret"))
