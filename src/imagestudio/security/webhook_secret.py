"""Webhook secrets in the Standard Webhooks format: ``whsec_`` and base64 of 24 to 64 random
bytes. Checked here strictly (the library itself skips characters that are not base64)."""

from __future__ import annotations

import base64
import binascii

PREFIX = "whsec_"
MIN_BYTES, MAX_BYTES = 24, 64


def webhook_secret_problem(secret: str) -> str | None:
    """What is wrong with ``secret``, or ``None`` when it is a valid ``whsec_`` secret.
    The message never repeats the secret."""
    if not secret.startswith(PREFIX):
        return f"must start with {PREFIX!r} (the Standard Webhooks format)"
    body = secret[len(PREFIX) :]
    try:
        key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        return f"must be {PREFIX} followed by base64"
    if not MIN_BYTES <= len(key) <= MAX_BYTES:
        return f"must hold {MIN_BYTES} to {MAX_BYTES} bytes of key, not {len(key)}"
    return None
