"""Signed, expiring result URLs: ``.../files/<key>?expires=<unix s>&signature=<hmac>``.

With API tokens set, the files route serves a result only to the owner's bearer token or to
a URL signed here (an ``<img src>`` cannot send a header). The answers sign the result URLs
they show; what the database keeps is the stable, unsigned URL. Expiry times are rounded up
to a step (a quarter of the lifetime), so answers within one step carry the same URL and a
browser's cache keeps working.

The signing key is derived from the server key (``SecretBox.derive``): changing
``IMAGESTUDIO_SECRET_KEY`` invalidates every signed URL.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable
from urllib.parse import quote

SIGNATURE_CHARS = 32


class UrlSigner:
    def __init__(
        self,
        secret: bytes,
        *,
        files_path: str,
        ttl_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret, self.files_path = secret, files_path.rstrip("/") + "/"
        self.ttl, self.clock = ttl_seconds, clock

    def signature(self, key: str, expires: int) -> str:
        message = f"{key}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:SIGNATURE_CHARS]

    def sign(self, url: str | None) -> str | None:
        """``url`` with a signature if it is one of our files route's URLs; else unchanged."""
        if not url:
            return url
        _, found, key = url.partition(self.files_path)
        if not found or "?" in key:
            return url
        step = max(1.0, self.ttl / 4)
        expires = int(math.ceil((self.clock() + self.ttl) / step) * step)
        return f"{url}?expires={expires}&signature={quote(self.signature(key, expires))}"

    def sign_all(self, urls: list[str]) -> list[str]:
        return [self.sign(url) or url for url in urls]

    def verify(self, key: str, expires: str | None, signature: str | None) -> bool:
        """True if ``signature`` signs ``key`` until ``expires``, not yet passed."""
        if not expires or not signature or not expires.isascii() or not expires.isdigit():
            return False
        if len(expires) > 12 or int(expires) < self.clock():
            return False
        expected = self.signature(key, int(expires))
        return hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace"))
