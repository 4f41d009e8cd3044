"""One webhook try over HTTP: the one function that sends (docs/webhooks.md).

The message is signed by the Standard Webhooks scheme through the ``standardwebhooks``
library (``webhook-id``, ``webhook-timestamp``, ``webhook-signature: v1,<base64 HMAC-SHA256 of
id.timestamp.body>``). The URL is checked by the SSRF guard (``security.netguard``) right
before every try, as sources are; redirects are not followed (a 3xx is a failed try). A 2xx
answer is a delivery; its body is not read.

Known gap, shared with the source fetch: the address is checked by resolving the host, then
httpx resolves it again to connect, so a DNS answer that changes in between is not seen.
Issue 13's guarded client (``security/``) closes it for every outbound call; this function is
the one place to switch.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import httpx
from standardwebhooks import Webhook

from imagestudio.errors import SourceUnavailable, UnsafeURL, WebhookFailed
from imagestudio.policy.webhooks import shown_url
from imagestudio.security.netguard import ensure_public_url

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
    http: httpx.AsyncClient,
    url: str,
    secret: str,
    *,
    msg_id: str,
    payload: dict[str, Any],
    at: datetime,
    allow_list: Sequence[str],
    time_limit: float,
) -> int:
    """Send one try; returns the receiver's 2xx status, else raises ``WebhookFailed``
    (with the status code when the receiver answered). Messages name the URL without its
    query or credentials."""
    shown = shown_url(url)
    try:
        await ensure_public_url(url, allow_list)
    except (UnsafeURL, SourceUnavailable) as exc:
        raise WebhookFailed(exc.message.replace(url, shown)) from exc
    body = body_of(payload)
    try:
        async with (
            asyncio.timeout(time_limit),  # the whole try, not each read (httpx's timeout)
            http.stream(
                "POST",
                url,
                content=body,
                headers=signed_headers(secret, msg_id, at, body),
                timeout=time_limit,
                follow_redirects=False,
            ) as response,
        ):
            status = response.status_code
    except (httpx.TimeoutException, TimeoutError) as exc:
        raise WebhookFailed(f"{shown} did not answer in {time_limit:g} s") from exc
    except httpx.HTTPError as exc:
        raise WebhookFailed(f"{shown}: {type(exc).__name__}") from exc
    if not 200 <= status < 300:
        raise WebhookFailed(f"{shown} answered {status}", status_code=status)
    return status
