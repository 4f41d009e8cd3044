"""LocalStorage: atomic writes, key validation, listing, serving; open_storage URLs."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagestudio.errors import StorageError
from imagestudio.storage import LocalFile, LocalStorage, ResultStorage, open_storage


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "results")


async def test_put_get_round_trip(storage: LocalStorage) -> None:
    await storage.put("jobs/j1/sku-1/a.png", b"first", "image/png")
    assert await storage.get("jobs/j1/sku-1/a.png") == b"first"
    assert storage.path_for("jobs/j1/sku-1/a.png").read_bytes() == b"first"


async def test_put_replaces_and_leaves_no_temp_files(storage: LocalStorage) -> None:
    await storage.put("a/b.webp", b"one", "image/webp")
    await storage.put("a/b.webp", b"two", "image/webp")
    assert await storage.get("a/b.webp") == b"two"
    assert [p.name for p in storage.path_for("a/b.webp").parent.iterdir()] == ["b.webp"]
    assert storage.path_for("a/b.webp").stat().st_mode & 0o777 == 0o644


async def test_failed_write_leaves_the_old_file_and_no_temp(storage: LocalStorage) -> None:
    await storage.put("a/b.png", b"old", "image/png")
    # Writing under an existing *file* as a folder fails inside the thread.
    with pytest.raises(StorageError, match="cannot write"):
        await storage.put("a/b.png/c.png", b"new", "image/png")
    assert await storage.get("a/b.png") == b"old"


async def test_list_by_prefix_sorted(storage: LocalStorage) -> None:
    for key in ["jobs/j2/x.png", "jobs/j1/s/b.png", "jobs/j1/s/a.png", "jobs/j10/z.png"]:
        await storage.put(key, b"x", "image/png")
    assert await storage.list("jobs/j1/") == ["jobs/j1/s/a.png", "jobs/j1/s/b.png"]
    assert await storage.list("jobs/j1") == [
        "jobs/j1/s/a.png",
        "jobs/j1/s/b.png",
        "jobs/j10/z.png",
    ]
    assert len(await storage.list("")) == 4
    assert await storage.list("nothing/here/") == []


async def test_delete_is_idempotent(storage: LocalStorage) -> None:
    await storage.put("a.png", b"x", "image/png")
    await storage.delete("a.png")
    await storage.delete("a.png")
    assert await storage.list("") == []
    with pytest.raises(StorageError, match="no stored result"):
        await storage.get("a.png")


@pytest.mark.parametrize(
    "key",
    [
        "",
        "../escape.png",
        "a/../../escape.png",
        "/etc/passwd",
        "a//b.png",
        "a/./b.png",
        ".hidden",
        "a/.tmp-x.part",
        "a\\b.png",
        "a b.png",
        "ünïcode.png",
        "a/",
    ],
)
async def test_bad_keys_are_refused(storage: LocalStorage, key: str) -> None:
    with pytest.raises(StorageError, match="invalid storage key"):
        await storage.put(key, b"x", "image/png")
    with pytest.raises(StorageError):
        storage.path_for(key)


@pytest.mark.parametrize("prefix", ["../", "/abs", "a/../b", "a b"])
async def test_bad_prefixes_are_refused(storage: LocalStorage, prefix: str) -> None:
    with pytest.raises(StorageError, match="invalid storage prefix"):
        await storage.list(prefix)


def test_open_storage_local_forms(tmp_path: Path) -> None:
    for url in [str(tmp_path), f"file://{tmp_path}", f"file://localhost{tmp_path}"]:
        opened = open_storage(url)
        assert isinstance(opened, LocalStorage)
        assert opened.root == tmp_path.resolve()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3://Bucket/prefix", "invalid S3 bucket name"),
        ("gs://bucket", "unsupported storage URL scheme 'gs'"),
        ("file://elsewhere/data", "must be local"),
    ],
)
def test_open_storage_refuses_what_it_cannot_open(url: str, message: str) -> None:
    with pytest.raises(StorageError, match=message):
        open_storage(url)


def test_local_storage_satisfies_the_protocol(tmp_path: Path) -> None:
    storage: ResultStorage = LocalStorage(tmp_path)
    assert storage is not None


async def test_discard_partials_removes_a_killed_writers_temp_files(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    await storage.put("job/0000-a1.png", b"done", "image/png")
    (tmp_path / "job" / ".tmp-killed.part").write_bytes(b"half")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / ".tmp-live.part").write_bytes(b"someone else's")
    assert await storage.discard_partials("job/") == 1
    assert await storage.list("job/") == ["job/0000-a1.png"]
    assert (tmp_path / "other" / ".tmp-live.part").exists()


async def test_serve_names_the_file_and_its_media_type(storage: LocalStorage) -> None:
    await storage.put("job/0000-a1.png", b"png", "image/png")
    await storage.put("job/0001-a1.jpg", b"jpg", "image/jpeg")
    await storage.put("job/0002-a1.webp", b"webp", "image/webp")
    await storage.put("job/0003-a1.bin", b"bin", "application/octet-stream")
    served = [await storage.serve(key) for key in await storage.list("job/")]
    assert served == [
        LocalFile(storage.path_for("job/0000-a1.png"), "image/png"),
        LocalFile(storage.path_for("job/0001-a1.jpg"), "image/jpeg"),
        LocalFile(storage.path_for("job/0002-a1.webp"), "image/webp"),
        LocalFile(storage.path_for("job/0003-a1.bin"), "application/octet-stream"),
    ]


@pytest.mark.parametrize("key", ["job/missing.png", "job", "../escape.png", ".hidden", "a//b"])
async def test_serve_refuses_missing_and_invalid_keys(storage: LocalStorage, key: str) -> None:
    (storage.root / "job").mkdir(parents=True)  # a folder is not a result either
    with pytest.raises(StorageError):
        await storage.serve(key)


def test_local_results_have_no_address_of_their_own(storage: LocalStorage) -> None:
    # None: the recorded result URL is the API's files route (see RunnerConfig.files_url).
    assert storage.public_url("job/0000-a1.png") is None
    with pytest.raises(StorageError, match="invalid storage key"):
        storage.public_url("../escape.png")
