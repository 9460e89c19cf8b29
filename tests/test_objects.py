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
