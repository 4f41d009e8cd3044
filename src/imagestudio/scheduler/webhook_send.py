"""One webhook try over HTTP: the one function that sends (docs/webhooks.md).

The message is signed by the Standard Webhooks scheme through the ``standardwebhooks``
library (``webhook-id``, ``webhook-timestamp``, ``webhook-signature: v1,<base64 HMAC-SHA256 of
id.timestamp.body>``). It goes out through the guarded path (``security.http.send_webhook``):
the address checked at connect (a name that rebinds to a private address gets nothing), the
whole try within its time limit, the answer capped, a redirect followed only as a 307/308 to
the same origin (any other 3xx is a failed try). A 2xx answer is a delivery.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import httpx
from standardwebhooks import Webhook

from imagestudio.errors import (
    AnswerTooLarge,
    DeadlineExceeded,
    SourceUnavailable,
    UnsafeURL,
    WebhookFailed,
)
from imagestudio.policy.webhooks import shown_url
from imagestudio.security.http import Outbound
from imagestudio.security.http import send_webhook as guarded_send

USER_AGENT = "imagestudio-webhooks/1"


def body_of(payload: dict[str, Any]) -> bytes:
    """The message body exactly as signed and sent."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def signed_headers(secret: str, msg_id: str, at: datetime, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers for ``body`` sent as ``msg_id`` at ``at``."""
    signature = Webhook(secret).sign(msg_id=msg_id, timestamp=at, data=body)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


async def send_webhook(
    outbound: Outbound,
    url: str,
    secret: str,
    *,
    msg_id: str,
    payload: dict[str, Any],
    at: datetime,
    time_limit: float,
) -> int:
    """Send one try through the guarded path; returns the receiver's 2xx status, else raises
    ``WebhookFailed`` (with the status code when the receiver answered). Messages name the
    URL without its query or credentials."""
    shown = shown_url(url)
    body = body_of(payload)
    try:
        answer = await guarded_send(
            outbound, url, body, signed_headers(secret, msg_id, at, body), deadline=time_limit
        )
    except UnsafeURL as exc:
        raise WebhookFailed(exc.message.replace(url, shown)) from exc
    except DeadlineExceeded as exc:
        raise WebhookFailed(f"{shown} did not answer in {time_limit:g} s") from exc
    except AnswerTooLarge as exc:
        raise WebhookFailed(f"{shown} answered over {exc.limit} bytes") from exc
    except (httpx.HTTPError, SourceUnavailable) as exc:
        raise WebhookFailed(f"{shown}: {type(exc).__name__}") from exc
    if not 200 <= answer.status < 300:
        raise WebhookFailed(f"{shown} answered {answer.status}", status_code=answer.status)
    return answer.status
