"""The receiver example in docs/webhooks.md (docs/examples/webhook_receiver.py) against our
own sender (``send_webhook``): it verifies the signature, acts once per ``webhook-id``, and
refuses a message signed with another secret."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from imagestudio.errors import WebhookFailed
from imagestudio.scheduler.webhook_send import send_webhook
from imagestudio.security.http import Outbound, OutboundPolicy
from testkit.webhook_receiver import whsec

EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "webhook_receiver.py"
SECRET = whsec(3)
MESSAGE = {
    "type": "job.succeeded",
    "timestamp": "2026-12-04T00:00:00+00:00",
    "data": {"job_id": "j1", "status": "succeeded"},
}


@pytest.fixture
def example() -> Iterator[tuple[ModuleType, str]]:
    spec = importlib.util.spec_from_file_location("webhook_receiver_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    server = module.serve(SECRET, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield module, f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


async def send(url: str, secret: str, msg_id: str, payload: dict[str, Any]) -> int:
    outbound = Outbound(OutboundPolicy.of(["127.0.0.1"]))
    try:
        return await send_webhook(
            outbound,
            url,
            secret,
            msg_id=msg_id,
            payload=payload,
            at=datetime.now(UTC),
            time_limit=5,
        )
    finally:
        await outbound.aclose()


async def test_the_example_verifies_and_acts_once_per_webhook_id(
    example: tuple[ModuleType, str], capsys: pytest.CaptureFixture[str]
) -> None:
    module, url = example
    assert await send(url, SECRET, "msg_1_job_succeeded", MESSAGE) == 204
    assert await send(url, SECRET, "msg_1_job_succeeded", MESSAGE) == 204  # a repeat
    assert module.SEEN == {"msg_1_job_succeeded"}
    assert capsys.readouterr().out.count("job.succeeded: job j1 succeeded") == 1
    with pytest.raises(WebhookFailed) as refused:
        await send(url, whsec(4), "msg_2_job_failed", MESSAGE)
    assert refused.value.status_code == 400
    assert module.SEEN == {"msg_1_job_succeeded"}


async def test_the_sender_refuses_a_private_address_at_send(
    example: tuple[ModuleType, str],
) -> None:
    _, url = example
    outbound = Outbound(OutboundPolicy.of([]))
    try:
        with pytest.raises(WebhookFailed, match=r"127\.0\.0\.1") as refused:
            await send_webhook(
                outbound,
                url + "?token=abc",
                SECRET,
                msg_id="m",
                payload=MESSAGE,
                at=datetime.now(UTC),
                time_limit=5,
            )
    finally:
        await outbound.aclose()
    assert "token=abc" not in refused.value.message
