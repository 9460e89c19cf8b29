"""Remote sources through fsspec (sluice/objects.py) against moto's S3 server: keys a folder cannot mirror."""

from __future__ import annotations

import pytest

from sluice.errors import SourceError
from sluice.objects import download_tree, filesystem
from sluice.settings import Settings
from tests.reliability.test_object_store import AWS_ENV, s3_server  # noqa: F401 (moto's S3 server, a fixture)


@pytest.fixture
def bucket(request, monkeypatch) -> Settings:
    """Settings reaching a fresh bucket `objects` on moto's server."""
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    settings = Settings(s3_endpoint_url=request.getfixturevalue("s3_server"))
    fs = filesystem(settings, "s3://")
    if not fs.exists("objects"):
        fs.mkdir("objects")
    return settings


@pytest.mark.parametrize("keys", [("a", "a/b.md"), ("a/b.md", "a")], ids=["file-first", "folder-first"])
def test_a_key_that_is_also_a_folder_is_refused_by_name(bucket, tmp_path, keys):
    fs = filesystem(bucket, "s3://")
    prefix = f"objects/{tmp_path.name}"
    for key in keys:
        fs.pipe(f"{prefix}/{key}", f"# {key}\n\nbody\n".encode())
    fs.pipe(f"{prefix}/c.md", b"# c\n\nbody\n")
    # S3 holds both keys, a folder cannot: a SourceError (the job's clear failure), not an OSError retried
    # until the job is dead-lettered.
    with pytest.raises(
        SourceError, match=r"'objects/.*/a/b.md' collides with another object named like its folder .*: rename one"
    ):
        download_tree(bucket, f"s3://{prefix}", tmp_path / "out", 1_000_000)


def _fill(bucket: Settings, prefix: str, sizes: list[int]) -> None:
    fs = filesystem(bucket, "s3://")
    for i, size in enumerate(sizes):
        fs.pipe(f"{prefix}/d{i}.md", b"x" * size)


def test_a_source_of_too_many_objects_is_refused_before_any_download(bucket, tmp_path):
    prefix = f"objects/{tmp_path.name}"
    _fill(bucket, prefix, [10, 10, 10])
    limited = bucket.model_copy(update={"max_source_objects": 2})
    refused = rf"'s3://{prefix}' holds 3 objects, more than SLUICE_MAX_SOURCE_OBJECTS \(2\): name a narrower prefix"
    with pytest.raises(SourceError, match=refused):
        download_tree(limited, f"s3://{prefix}", tmp_path / "out", 1_000_000)
    assert not (tmp_path / "out").exists()
    enough = bucket.model_copy(update={"max_source_objects": 3})
    assert download_tree(enough, f"s3://{prefix}", tmp_path / "ok", 100) == 3


def test_a_source_of_too_many_bytes_is_refused_and_objects_too_big_to_fetch_do_not_count(bucket, tmp_path):
    prefix = f"objects/{tmp_path.name}"
    _fill(bucket, prefix, [400, 400, 5000])
    limited = bucket.model_copy(update={"max_source_bytes": 799})
    with pytest.raises(SourceError, match=r"holds 800 bytes to download, more than SLUICE_MAX_SOURCE_BYTES \(799\)"):
        download_tree(limited, f"s3://{prefix}", tmp_path / "out", 1000)
    assert not (tmp_path / "out").exists()
    # the 5000-byte object is over the per-file cap: a sparse stand-in, not a download, so 800 bytes fit
    enough = limited.model_copy(update={"max_source_bytes": 800})
    assert download_tree(enough, f"s3://{prefix}", tmp_path / "ok", 1000) == 3
    assert (tmp_path / "ok" / "d2.md").stat().st_size == 5000
