"""``s3://bucket/prefix``, the options of a bucket storage, and the addresses of objects in
it: pure, no I/O and no S3 client (importing this does not load botocore).

- ``S3Options``: how to reach the bucket and how result URLs look (from ``Settings``).
- ``parse_s3_url``: the bucket and the key prefix (``""`` or ending in ``/``).
- ``public_object_url``: where an object is fetched without a signature: under a CDN or public
  base URL when one is set (it stands for the bucket's root), else on the endpoint itself,
  path-style (``<endpoint>/<bucket>/<key>``) or virtual-hosted (``<bucket>.<host>/<key>``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote, urlsplit

from imagestudio.errors import StorageError

# S3's rules for new buckets: 3-63 of a-z 0-9 . -, starting and ending with a letter or digit.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PREFIX_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
AWS_DEFAULT_REGION = "us-east-1"
# A result key names one attempt's bytes and is never rewritten with other bytes.
IMMUTABLE = "public, max-age=31536000, immutable"


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    prefix: str  # "" or "a/b/"


def parse_s3_url(url: str) -> S3Location:
    """``s3://bucket`` or ``s3://bucket/some/prefix`` (a trailing slash is optional)."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "s3":
        raise StorageError(f"not an s3:// storage URL: {url!r}")
    if parts.query or parts.fragment or "@" in parts.netloc or ":" in parts.netloc:
        raise StorageError(
            "an s3:// storage URL is s3://bucket/prefix only: credentials, ports and options"
            " come from the AWS settings (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...)"
        )
    bucket = parts.netloc
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise StorageError(
            f"invalid S3 bucket name {bucket!r}: 3-63 characters of a-z 0-9 . -,"
            " starting and ending with a letter or digit"
        )
    segments = [s for s in parts.path.split("/") if s]
    if not all(_PREFIX_SEGMENT.fullmatch(s) for s in segments):
        raise StorageError(
            f"invalid S3 key prefix {parts.path!r}: use segments of A-Z a-z 0-9 . _ -"
            " that do not start with a dot"
        )
    return S3Location(bucket, "".join(f"{s}/" for s in segments))


def public_object_url(
    *,
    bucket: str,
    object_key: str,
    public_base_url: str | None,
    endpoint_url: str | None,
    region: str | None,
    path_style: bool,
) -> str:
    """The unsigned URL of ``object_key`` (the full key, prefix included)."""
    quoted = quote(object_key, safe="/")
    if public_base_url:
        return f"{public_base_url.rstrip('/')}/{quoted}"
    if endpoint_url:
        parts = urlsplit(endpoint_url.rstrip("/"))
        if path_style:
            return f"{parts.scheme}://{parts.netloc}{parts.path}/{bucket}/{quoted}"
        return f"{parts.scheme}://{bucket}.{parts.netloc}{parts.path}/{quoted}"
    host = f"s3.{region or AWS_DEFAULT_REGION}.amazonaws.com"
    if path_style:
        return f"https://{host}/{bucket}/{quoted}"
    return f"https://{bucket}.{host}/{quoted}"


@dataclass(frozen=True)
class S3Options:
    """How to reach the bucket and how result URLs look. Secrets are kept out of ``repr``."""

    endpoint_url: str | None = None
    # The store's address as the result URLs' users see it (a compose network's "minio:9000"
    # is "localhost:9000" to a browser): presigned and public URLs are made for it.
    public_endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    path_style: bool | None = None  # None: path-style when an endpoint is set (MinIO & co)
    urls: Literal["presigned", "public"] = "presigned"
    public_base_url: str | None = None
    presign_seconds: int = 3600
    acl: str | None = None  # a canned ACL for each result ("public-read"); None: the bucket's
    cache_control: str = IMMUTABLE

    @property
    def uses_path_style(self) -> bool:
        return self.path_style if self.path_style is not None else self.endpoint_url is not None

    @property
    def url_endpoint(self) -> str | None:
        """The endpoint result URLs point at."""
        return self.public_endpoint_url or self.endpoint_url
