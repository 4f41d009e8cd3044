"""Result storage in an S3-compatible bucket (AWS S3, MinIO, R2, Ceph...), through aiobotocore.

``IMAGESTUDIO_STORAGE_URL=s3://bucket/prefix``; the endpoint, region and credentials are the
usual AWS settings (``S3Options``, built from ``Settings``): explicit keys when given, else
botocore's own chain (``AWS_PROFILE`` and the shared config files, SSO, instance roles).
Why aiobotocore and not obstore: ``docs/s3.md`` (measured by ``bench/s3_clients.py``).

- ``put`` is one ``PutObject`` (never multipart: a result is a few MB), so an object is
  either whole or absent; there are no partial writes to discard. Objects carry their
  content type and ``Cache-Control: public, max-age=31536000, immutable``: a result key names
  one attempt (``...-a<fence>.<ext>``) and is never rewritten.
- Result URLs: ``urls="public"`` records the object's own unsigned URL (under
  ``public_base_url``, a CDN in front of the bucket's root, when set); the bucket's policy,
  the CDN's origin access, or ``acl="public-read"`` on each object makes it readable.
  ``urls="presigned"`` records the API's files route, which redirects to a fresh presigned
  GET each time (objects stay private).
- Errors from botocore become ``StorageError`` with the operation, the key and S3's error
  code; the secret key is never part of a message (botocore does not put it in one either).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import BotoCoreError, ClientError

from imagestudio.errors import StorageError
from imagestudio.storage.base import Redirect, Served
from imagestudio.storage.local import validate_key
from imagestudio.storage.s3_url import S3Location, S3Options, public_object_url

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

PUBLIC_REDIRECT_MAX_AGE = 3600
_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})


def _describe(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": ")
    return type(exc).__name__ + (f": {exc}" if str(exc) else "")


def _is_missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code", "")) in _MISSING


class S3Storage:
    """``ResultStorage`` in ``s3://bucket/prefix``: key ``a/b.png`` is object ``prefix + a/b.png``.

    The client is made on first use (making one is async, ``open_storage`` is not) and
    closed by ``aclose``.
    """

    def __init__(self, location: S3Location, options: S3Options) -> None:
        self.location, self.options = location, options
        self._stack = contextlib.AsyncExitStack()
        self._client: S3Client | None = None
        self._signer: S3Client | None = None  # for URLs, when they name another endpoint
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"S3Storage(s3://{self.location.bucket}/{self.location.prefix}, {self.options!r})"

    async def _get_client(self) -> S3Client:
        client = self._client
        if client is not None:
            return client
        async with self._lock:
            if self._client is not None:
                return self._client
            try:
                created: S3Client = await self._stack.enter_async_context(
                    self._create_client(self.options.endpoint_url)
                )
            except (BotoCoreError, ClientError) as exc:  # a missing profile, a bad region
                raise self._failed("reach", "", exc) from exc
            self._client = created
            return created

    async def _get_signer(self) -> S3Client:
        """The client that signs result URLs: the main one unless they name another endpoint
        (signing is local: this client never sends a request)."""
        o = self.options
        if o.url_endpoint == o.endpoint_url:
            return await self._get_client()
        async with self._lock:
            if self._signer is None:
                created: S3Client = await self._stack.enter_async_context(
                    self._create_client(o.url_endpoint)
                )
                self._signer = created
            return self._signer

    def _create_client(self, endpoint_url: str | None) -> Any:
        o = self.options
        session = AioSession(profile=o.profile)
        # Checksums only where S3 requires them: botocore's newer default (CRC32 on every
        # put, since 1.36) is refused by several S3-compatible stores, and costs CPU.
        config = AioConfig(
            s3={"addressing_style": "path" if o.uses_path_style else "virtual"},
            signature_version="s3v4",
            retries={"max_attempts": 3, "mode": "standard"},
            max_pool_connections=32,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        return session.create_client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=o.region or session.get_config_variable("region") or "us-east-1",
            aws_access_key_id=o.access_key_id,
            aws_secret_access_key=o.secret_access_key,
            aws_session_token=o.session_token,
            config=config,
        )

    async def aclose(self) -> None:
        await self._stack.aclose()
        self._client = self._signer = None

    def _object_key(self, key: str) -> str:
        return self.location.prefix + validate_key(key)

    def _failed(self, action: str, key: str, exc: Exception) -> StorageError:
        where = f"s3://{self.location.bucket}/{self.location.prefix}{key}"
        return StorageError(f"cannot {action} {where}: {_describe(exc)}")

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        name = self._object_key(key)
        client = await self._get_client()
        extra: dict[str, Any] = {"ACL": self.options.acl} if self.options.acl else {}
        try:
            await client.put_object(
                Bucket=self.location.bucket,
                Key=name,
                Body=data,
                ContentType=content_type,
                CacheControl=self.options.cache_control,
                **extra,
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._failed("write", key, exc) from exc

    async def get(self, key: str) -> bytes:
        name = self._object_key(key)
        client = await self._get_client()
        with self._reading(key):
            answer = await client.get_object(Bucket=self.location.bucket, Key=name)
            async with answer["Body"] as body:
                return await body.read()

    @contextlib.contextmanager
    def _reading(self, key: str) -> Iterator[None]:
        """The bucket's errors while reading ``key`` as ``StorageError`` (a missing object
        says so)."""
        try:
            yield
        except ClientError as exc:
            if _is_missing(exc):
                raise StorageError(f"no stored result under {key!r}") from exc
            raise self._failed("read", key, exc) from exc
        except BotoCoreError as exc:
            raise self._failed("read", key, exc) from exc

    async def delete(self, key: str) -> None:
        name = self._object_key(key)
        client = await self._get_client()
        try:
            await client.delete_object(Bucket=self.location.bucket, Key=name)
        except (ClientError, BotoCoreError) as exc:
            raise self._failed("delete", key, exc) from exc

    async def list(self, prefix: str = "") -> list[str]:
        if prefix.startswith("/") or ".." in prefix.split("/"):
            raise StorageError(f"invalid storage prefix {prefix!r}")
        client = await self._get_client()
        start = len(self.location.prefix)
        keys: list[str] = []
        try:
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=self.location.bucket, Prefix=self.location.prefix + prefix
            )
            async for page in pages:
                keys.extend(item["Key"][start:] for item in page.get("Contents", []))
        except (ClientError, BotoCoreError) as exc:
            raise self._failed("list", prefix, exc) from exc
        return sorted(keys)

    async def discard_partials(self, prefix: str) -> int:
        """Nothing to do: a single ``PutObject`` is atomic, so no half-written object exists."""
        del prefix
        return 0

    async def check(self) -> None:
        """``StorageError`` unless the bucket answers (``HeadBucket``): for readiness."""
        client = await self._get_client()
        try:
            await client.head_bucket(Bucket=self.location.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise self._failed("reach", "", exc) from exc

    def public_url(self, key: str) -> str | None:
        name = self._object_key(key)
        if self.options.urls != "public":
            return None
        o = self.options
        return public_object_url(
            bucket=self.location.bucket,
            object_key=name,
            public_base_url=o.public_base_url,
            endpoint_url=o.url_endpoint,
            region=o.region,
            path_style=o.uses_path_style,
        )

    async def serve(self, key: str) -> Served:
        name = self._object_key(key)
        client = await self._get_client()
        with self._reading(key):
            await client.head_object(Bucket=self.location.bucket, Key=name)
        public = self.public_url(key)
        if public is not None:
            return Redirect(public, max_age=PUBLIC_REDIRECT_MAX_AGE)
        signer = await self._get_signer()
        url = await signer.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.location.bucket, "Key": name},
            ExpiresIn=self.options.presign_seconds,
        )
        return Redirect(url)
