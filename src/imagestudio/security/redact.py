"""Secrets out of text: API keys as given and in the forms they come back in.

Providers and gateways echo keys in error messages, sometimes encoded: base64 (a Basic
credential, a debug dump), URL-encoded (a query string), or as a ``Bearer`` header. ``redact``
replaces every known secret in each of these forms, anything shaped like an OpenAI key
(``sk-...``) and any bearer token.

``KNOWN`` is the process's register of secrets in use: the provider pool adds each API key it
opens, and the log pipeline (``observability.logs``) redacts every log line with it, so a key
cannot reach a log even through a traceback or a foreign library's message.
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

REDACTED = "[REDACTED]"
MIN_SECRET = 8  # shorter strings would redact ordinary words

_SK_TOKEN = re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_\-*.]{4,}")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-~+/=*]+")
# The userinfo of a URL (``scheme://user:password@``), up to the last ``@`` before the path.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s]*@")


def strip_userinfo(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced (``http://[REDACTED]@host``)."""
    return _USERINFO.sub(lambda m: m.group(1) + REDACTED + "@", text)


def forms(secret: str) -> set[str]:
    """``secret`` as given, URL-encoded, and base64-encoded (standard and URL-safe) wherever
    it sits in the encoded text: alone, or inside a longer value such as ``user:secret``
    (HTTP Basic), where its encoding depends on its offset modulo 3."""
    found = {secret, quote(secret, safe=""), quote_plus(secret)}
    for offset in range(3):
        data = ("x" * offset + secret).encode()
        # Only whole 3-byte groups made of the secret's bytes encode the same in any context.
        start, end = (0 if offset == 0 else 4), 4 * (len(data) // 3)
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            found.add(encode(data).decode()[start:end])
    return {form for form in found if len(form) >= MIN_SECRET}


class SecretRegister:
    """The secrets a process knows and the forms to look for; safe to share across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._forms: tuple[str, ...] = ()

    def add(self, secret: str) -> None:
        if len(secret) < MIN_SECRET:
            return
        with self._lock:
            merged = set(self._forms) | forms(secret)
            self._forms = tuple(sorted(merged, key=len, reverse=True))  # longest first

    @property
    def forms(self) -> tuple[str, ...]:
        return self._forms


KNOWN = SecretRegister()


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without ``secrets`` and the known secrets (in all their forms), ``sk-...``
    keys, bearer tokens and the credentials of URLs."""
    extra = [form for secret in secrets if len(secret) >= MIN_SECRET for form in forms(secret)]
    for form in sorted(extra, key=len, reverse=True) + list(KNOWN.forms):
        if form in text:
            text = text.replace(form, REDACTED)
    text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    text = strip_userinfo(text)
    return _SK_TOKEN.sub("sk-" + REDACTED, text)
