"""``s3://bucket/prefix`` parsing, public object URLs, and how settings become S3 options: pure,
table-driven (the bucket itself is in tests/integration/test_s3_storage.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagestudio.errors import StorageError
from imagestudio.runtime.services import s3_options
from imagestudio.settings import Settings
from imagestudio.storage import LocalStorage, S3Options, open_storage
from imagestudio.storage.s3 import S3Storage
from imagestudio.storage.s3_url import S3Location, parse_s3_url, public_object_url


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://results", "results", ""),
        ("s3://results/", "results", ""),
        ("s3://results/studio", "results", "studio/"),
        ("s3://results/studio/", "results", "studio/"),
        ("s3://my.bucket-1/a/b_c/d.e", "my.bucket-1", "a/b_c/d.e/"),
        ("S3://results//a//", "results", "a/"),
    ],
)
def test_s3_urls_name_a_bucket_and_a_prefix(url: str, bucket: str, prefix: str) -> None:
    assert parse_s3_url(url) == S3Location(bucket, prefix)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("s3://", "invalid S3 bucket name"),
        ("s3://ab", "invalid S3 bucket name"),
        ("s3://Results", "invalid S3 bucket name"),
        ("s3://-results", "invalid S3 bucket name"),
        ("s3://re..sults", "invalid S3 bucket name"),
        ("s3://results/../etc", "invalid S3 key prefix"),
        ("s3://results/.hidden", "invalid S3 key prefix"),
        ("s3://results/a b", "invalid S3 key prefix"),
        ("s3://key:secret@results/x", "credentials, ports and options"),
        ("s3://results:9000/x", "credentials, ports and options"),
        ("s3://results/x?region=eu", "credentials, ports and options"),
        ("gs://results", "not an s3:// storage URL"),
    ],
)
def test_bad_s3_urls_are_refused_with_the_reason(url: str, says: str) -> None:
    with pytest.raises(StorageError, match="^.*" + says):
        parse_s3_url(url)


def test_a_refused_url_with_credentials_does_not_repeat_them() -> None:
    with pytest.raises(StorageError) as caught:
        parse_s3_url("s3://AKIAXXX:topsecret@results/x")
    assert "topsecret" not in str(caught.value)


@pytest.mark.parametrize(
    ("base", "endpoint", "region", "path_style", "expected"),
    [
        (None, "http://127.0.0.1:9000", None, True, "http://127.0.0.1:9000/b/p/k%20x.png"),
        (None, "http://minio:9000/", None, True, "http://minio:9000/b/p/k%20x.png"),
        (None, "https://r2.example", None, False, "https://b.r2.example/p/k%20x.png"),
        (None, None, "eu-west-1", False, "https://b.s3.eu-west-1.amazonaws.com/p/k%20x.png"),
        (None, None, None, False, "https://b.s3.us-east-1.amazonaws.com/p/k%20x.png"),
        (None, None, "eu-west-1", True, "https://s3.eu-west-1.amazonaws.com/b/p/k%20x.png"),
        (
            "https://cdn.example/",
            "http://minio:9000",
            None,
            True,
            "https://cdn.example/p/k%20x.png",
        ),
        ("https://cdn.example/img", None, None, False, "https://cdn.example/img/p/k%20x.png"),
    ],
)
def test_public_object_urls(
    base: str | None, endpoint: str | None, region: str | None, path_style: bool, expected: str
) -> None:
    url = public_object_url(
        bucket="b",
        object_key="p/k x.png",
        public_base_url=base,
        endpoint_url=endpoint,
        region=region,
        path_style=path_style,
    )
    assert url == expected


@pytest.mark.parametrize(
    ("endpoint", "setting", "expected"),
    [
        (None, None, False),
        ("http://minio:9000", None, True),
        ("http://x", False, False),
        (None, True, True),
    ],
)
def test_path_style_follows_the_endpoint_unless_set(
    endpoint: str | None, setting: bool | None, expected: bool
) -> None:
    assert S3Options(endpoint_url=endpoint, path_style=setting).uses_path_style is expected


def test_the_aws_settings_are_read_under_their_usual_names(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in {
        "IMAGESTUDIO_STORAGE_URL": "s3://results/studio",
        "IMAGESTUDIO_S3_URLS": "public",
        "IMAGESTUDIO_S3_PUBLIC_BASE_URL": "https://cdn.example",
        "IMAGESTUDIO_S3_PRESIGN_SECONDS": "600",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_REGION": "eu-central-1",
        "AWS_PROFILE": "studio",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "the-secret-access-key",
        "AWS_SESSION_TOKEN": "the-session-token",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)  # no .env file
    settings = Settings()
    options = s3_options(settings)
    assert options == S3Options(
        endpoint_url="http://127.0.0.1:9000",
        region="eu-central-1",
        profile="studio",
        access_key_id="AKIAEXAMPLE",
        secret_access_key="the-secret-access-key",
        session_token="the-session-token",
        urls="public",
        public_base_url="https://cdn.example",
        presign_seconds=600,
    )
    storage = open_storage(settings.effective_storage_url, s3=options)
    assert isinstance(storage, S3Storage)
    for shown in (repr(settings), repr(options), repr(storage), str(settings.model_dump())):
        assert "the-secret-access-key" not in shown
        assert "the-session-token" not in shown
    assert (
        storage.public_url("job/0000-a-b-a1.png")
        == "https://cdn.example/studio/job/0000-a-b-a1.png"
    )


def test_aws_default_region_is_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    assert Settings(_env_file=None).aws_region == "ap-south-1"


@pytest.mark.parametrize("url", ["results", "file:///tmp/results"])
def test_paths_and_file_urls_stay_local(url: str) -> None:
    assert isinstance(open_storage(url), LocalStorage)


def test_presigned_storage_has_no_public_url_and_keys_are_checked() -> None:
    storage = open_storage("s3://results/p", s3=S3Options(endpoint_url="http://127.0.0.1:1"))
    assert storage.public_url("job/0000-a-b-a1.png") is None
    with pytest.raises(StorageError, match="invalid storage key"):
        storage.public_url("../x.png")
