"""Remote sources through fsspec (sluice/objects.py): keys a folder cannot mirror, limits, a denied or silent store."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from serving.api.errors import ApiError
from serving.api.jobs import resolve_source
from sluice.errors import SourceError
from sluice.objects import download_tree, filesystem
from sluice.settings import Settings
from tests.reliability.test_object_store import AWS_ENV, s3_server  # noqa: F401 (moto's S3 server, a fixture)
from tests.serving_support import free_port


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


class _Denied(BaseHTTPRequestHandler):
    """An S3 endpoint that refuses every request as S3 does when a policy denies it."""

    def _deny(self) -> None:
        body = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = do_POST = _deny

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def denied(monkeypatch) -> Iterator[Settings]:
    """Settings whose S3 endpoint denies every request."""
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Denied)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Settings(s3_endpoint_url=f"http://127.0.0.1:{server.server_port}", ingest_url="s3://objects/ingest")
    server.shutdown()


def test_a_source_the_credentials_may_not_read_is_a_422_naming_it_and_the_fix(denied):
    with pytest.raises(ApiError) as caught:
        resolve_source(denied, "acme", "s3://objects/ingest/acme/docs")
    assert caught.value.status == 422
    assert "access to source 's3://objects/ingest/acme/docs' is denied: grant the credentials" in caught.value.detail
    assert AWS_ENV["AWS_SECRET_ACCESS_KEY"] not in caught.value.detail


def test_a_store_that_does_not_answer_is_a_503_naming_the_source(monkeypatch):
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    down = Settings(s3_endpoint_url=f"http://127.0.0.1:{free_port()}", ingest_url="s3://objects/ingest")
    with pytest.raises(ApiError) as caught:
        resolve_source(down, "acme", "s3://objects/ingest/acme/docs")
    assert (caught.value.status, caught.value.headers) == (503, {"Retry-After": "30"})
    assert "object store of source 's3://objects/ingest/acme/docs' did not answer" in caught.value.detail
    assert "SLUICE_S3_ENDPOINT_URL" in caught.value.detail
