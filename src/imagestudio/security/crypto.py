"""Encrypts per-job API keys at rest with the server key (Fernet: AES-128-CBC + HMAC)."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from imagestudio.errors import ImageStudioError

KEY_FILE = "secret.key"


class SecretBox:
    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)
        self._key = key

    def derive(self, purpose: str) -> bytes:
        """A key for ``purpose`` (signing result URLs), derived from the server key, so the
        server key itself is used for one thing only."""
        return hmac.new(self._key, purpose.encode(), hashlib.sha256).digest()

    def seal(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def open(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(token).decode()
        except InvalidToken as exc:
            raise ImageStudioError(
                "cannot decrypt a stored API key: IMAGESTUDIO_SECRET_KEY changed?"
            ) from exc


def load_or_create_key(configured: str | None, data_dir: Path) -> bytes:
    """The configured key, else the one in ``data_dir/secret.key`` (created 0600 if absent)."""
    if configured:
        return configured.encode()
    path = data_dir / KEY_FILE
    if path.exists():
        return path.read_bytes().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    return key
