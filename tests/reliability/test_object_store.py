"""Uploads in an S3 bucket (SLUICE_UPLOAD_STORE=s3://...) and named s3:// and file:// sources.

The bucket is served by moto's S3 server in a process of its own: a real HTTP endpoint speaking the S3
protocol, which s3fs reaches exactly as it would reach AWS or MinIO (SLUICE_S3_ENDPOINT_URL).
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from serving.upload_store import ObjectStore
from sluice.objects import filesystem
from tests.serving_support import (
    free_port,
    keyed_tenant,
    run_job,
    serving_stack,
    start_worker,
    stop_worker,
    wait_job,
)

BUCKET = "sluice-test"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
HERONS = "# Herons\n\nGrey herons stand motionless in the shallows, waiting for fish.\n"
WRENS = "# Wrens\n\nWrens sing loudly for their size from the hedgerow.\n"


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """moto's S3 server on a free loopback port; its URL."""
    port, log = free_port(), tmp_path_factory.mktemp("moto") / "moto.log"
    binary = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen(
        [str(binary), "-H", "127.0.0.1", "-p", str(port)], stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(url, timeout=2)
            break
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not start: {log.read_text()[-2000:]}") from None
            time.sleep(0.2)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def s3_settings(stack_settings, s3_server, tmp_path_factory):
    """A stack whose uploads go to the bucket and whose tenants may name sources below s3://BUCKET/ingest."""
    mp = pytest.MonkeyPatch()
    for name, value in AWS_ENV.items():  # the API runs in this process; the worker gets them too (extra_env)
        mp.setenv(name, value)
    root = tmp_path_factory.mktemp("ingest-root")
    settings = stack_settings(
        "s3",
        upload_store=f"s3://{BUCKET}/uploads",
        s3_endpoint_url=s3_server,
        ingest_url=f"s3://{BUCKET}/ingest",
        ingest_root=root,
    )
    filesystem(settings, "s3://").mkdir(BUCKET)
    yield settings
    mp.undo()


def _objects(settings, prefix: str) -> list[str]:
    fs = filesystem(settings, "s3://")
    fs.invalidate_cache()
    return sorted(fs.find(f"{BUCKET}/{prefix}"))


def _upload(name: str, text: str) -> dict:
    return {"name": name, "content_base64": base64.b64encode(text.encode()).decode()}


def test_uploads_wait_in_the_bucket_and_are_deleted_after_the_job(s3_settings, db, tmp_path):
    tenant, key = keyed_tenant(db, "s3up")
    with serving_stack(s3_settings, tmp_path, concurrency=0) as stack, stack.client(key, timeout=120) as client:
        r = client.post("/v1/jobs", json={"kind": "ingest", "files": [_upload("herons.md", HERONS)]})
        assert r.status_code == 202, r.text
        with db.tenant(tenant) as conn:
            (location,) = conn.execute("SELECT location FROM uploads").fetchone()
            assert conn.execute("SELECT count(*) FROM upload_parts").fetchone()[0] == 0  # not in the database
        assert location.startswith(f"s3://{BUCKET}/uploads/{tenant}/")
        assert _objects(s3_settings, f"uploads/{tenant}") == [location.removeprefix("s3://")]
        worker = start_worker(s3_settings, tmp_path / "worker.log", extra_env=AWS_ENV)
        try:
            done = run_job(client, {"kind": "query", "question": "warm up"}, timeout=120)  # the worker is up
            body = wait_job(client, r.json()["job_id"], timeout=300)
        finally:
            stop_worker(worker)
    assert done["status"] == "succeeded"
    assert body["status"] == "succeeded" and body["result"]["ingested"] == 1, body
    with db.tenant(tenant) as conn:
        assert conn.execute("SELECT count(*) FROM uploads").fetchone()[0] == 0
        assert [r[0] for r in conn.execute("SELECT source_id FROM documents")] == ["herons.md"]
    assert _objects(s3_settings, f"uploads/{tenant}") == []


def test_named_s3_and_file_sources(s3_settings, db, tmp_path):
    tenant, key = keyed_tenant(db, "s3src")
    other, _ = keyed_tenant(db, "s3other")
    fs = filesystem(s3_settings, "s3://")
    fs.pipe(f"{BUCKET}/ingest/{tenant}/birds/herons.md", HERONS.encode())
    fs.pipe(f"{BUCKET}/ingest/{tenant}/birds/more/wrens.md", WRENS.encode())
    fs.pipe(f"{BUCKET}/ingest/{other}/private.md", b"# Private\n\nnot yours\n")
    local = s3_settings.ingest_root / tenant / "local"
    local.mkdir(parents=True)
    (local / "wrens.md").write_text(WRENS)
    with serving_stack(s3_settings, tmp_path, extra_env=AWS_ENV) as stack, stack.client(key, timeout=120) as client:
        remote = run_job(client, {"kind": "ingest", "source": f"s3://{BUCKET}/ingest/{tenant}/birds"})
        assert remote["result"]["ingested"] == 2 and remote["result"]["failed"] == 0, remote
        by_url = run_job(client, {"kind": "ingest", "source": f"file://{local}"})
        assert by_url["result"]["ingested"] == 1, by_url
        refused = {
            f"s3://{BUCKET}/ingest/{other}/private.md": "outside your ingest prefix",
            f"s3://{BUCKET}/ingest/{tenant}/../{other}/private.md": "outside your ingest prefix",
            f"s3://{BUCKET}/ingest/{tenant}/nothing-here": "names no object",
            f"file://{s3_settings.ingest_root / other}": "inside your ingest folder",
            "file:///etc/passwd": "inside your ingest folder",
        }
        for source, says in refused.items():
            r = client.post("/v1/jobs", json={"kind": "ingest", "source": source})
            assert r.status_code == 422 and says in r.json()["detail"], (source, r.text)
    with db.tenant(tenant) as conn:
        sources = sorted(r[0] for r in conn.execute("SELECT source_id FROM documents"))
    assert sources == ["herons.md", "more/wrens.md", "wrens.md"]


def test_the_object_store_sweep_deletes_expired_objects(s3_settings, db, migrated):
    """Orphans in the bucket go with their rows: the sweep deletes the objects the expired rows name."""
    import psycopg

    from serving.upload_store import NewFile, expire, save
    from sluice.db import admin_conninfo, app_conninfo

    tenant, _ = keyed_tenant(db, "s3old")
    store = ObjectStore(s3_settings)
    save(db, store, tenant, [NewFile("old.md", 3, [b"old"])])
    assert len(_objects(s3_settings, f"uploads/{tenant}")) == 1
    with psycopg.connect(admin_conninfo(migrated)) as conn:
        conn.execute("UPDATE uploads SET created_at = now() - interval '2 days' WHERE tenant_id = %s", (tenant,))
    with psycopg.connect(app_conninfo(migrated), autocommit=True) as conn:
        assert expire(conn, store, retention_h=24) >= 1
    assert _objects(s3_settings, f"uploads/{tenant}") == []
