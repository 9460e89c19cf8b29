"""The upload store on the real database: files round-trip by id, under the tenant policy, and orphans expire."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from serving.upload_store import (
    NewFile,
    ObjectStore,
    PostgresStore,
    discard,
    expire,
    fetch,
    pieces_of,
    save,
    upload_store,
)
from sluice.db import admin_conninfo, app_conninfo
from sluice.errors import SourceError
from sluice.objects import filesystem
from sluice.settings import Settings
from tests.reliability.test_object_store import AWS_ENV, s3_server  # noqa: F401 (moto's S3 server, a fixture)

STORE = PostgresStore()


def _count(migrated, tenant: str) -> tuple[int, int]:
    with psycopg.connect(admin_conninfo(migrated)) as conn:  # the admin sees every tenant's rows
        files = conn.execute("SELECT count(*) FROM uploads WHERE tenant_id = %s", (tenant,)).fetchone()[0]
        parts = conn.execute("SELECT count(*) FROM upload_parts WHERE tenant_id = %s", (tenant,)).fetchone()[0]
    return files, parts


def test_files_round_trip_in_parts_and_are_discarded(db, migrated, new_tenant, tmp_path):
    tenant = new_tenant("ups")
    big, small = os.urandom(9 * 1024 * 1024 + 5), b"# note\n\nshort\n"
    ids = save(db, STORE, tenant, [NewFile("big.bin", len(big), pieces_of(big)), NewFile("a.md", 14, [small])])
    assert _count(migrated, tenant) == (2, 4)  # 9 MiB in three 4 MiB parts, the note in one
    fetch(db, STORE, tenant, ids, tmp_path)
    assert (tmp_path / "big.bin").read_bytes() == big and (tmp_path / "a.md").read_bytes() == small
    assert discard(db, STORE, tenant, ids) == 2
    assert _count(migrated, tenant) == (0, 0)  # the parts went with their rows


def test_another_tenant_cannot_fetch_or_discard(db, migrated, new_tenant, tmp_path):
    owner, other = new_tenant("upo"), new_tenant("upx")
    ids = save(db, STORE, owner, [NewFile("secret.md", 6, [b"secret"])])
    with pytest.raises(SourceError, match="no longer exist"):
        fetch(db, STORE, other, ids, tmp_path)
    assert discard(db, STORE, other, ids) == 0
    assert not list(tmp_path.iterdir()) and _count(migrated, owner) == (1, 1)


def test_a_write_that_fails_midway_leaves_nothing(db, migrated, new_tenant):
    tenant = new_tenant("upf")

    def pieces():
        yield b"first piece"
        raise ValueError("bad base64 in the second piece")

    with pytest.raises(ValueError):
        save(db, STORE, tenant, [NewFile("ok.md", 2, [b"ok"]), NewFile("bad.md", 100, pieces())])
    assert _count(migrated, tenant) == (0, 0)


def test_orphans_older_than_the_retention_are_swept(db, migrated, new_tenant):
    old, fresh = new_tenant("upold"), new_tenant("upnew")
    save(db, STORE, old, [NewFile("o.md", 1, [b"o"])])
    keep = save(db, STORE, fresh, [NewFile("f.md", 1, [b"f"])])
    with psycopg.connect(admin_conninfo(migrated)) as conn:
        conn.execute("UPDATE uploads SET created_at = now() - interval '3 hours' WHERE tenant_id = %s", (old,))
    with psycopg.connect(app_conninfo(migrated), autocommit=True) as conn:  # as the workers' sweep does
        expire(conn, STORE, retention_h=2)
    assert _count(migrated, old) == (0, 0)
    assert _count(migrated, fresh) == (1, 1)
    discard(db, STORE, fresh, keep)


def test_the_database_refuses_a_file_over_its_limit(db, new_tenant):
    tenant = new_tenant("uplim")
    with pytest.raises(psycopg.errors.CheckViolation):
        save(db, STORE, tenant, [NewFile("huge.bin", 256 * 1024 * 1024 + 1, [b"x"])])


def test_settings_refuse_an_upload_limit_the_database_cannot_hold():
    with pytest.raises(ValueError, match="SLUICE_UPLOAD_STORE=s3://"):
        Settings(max_upload_bytes=300 * 1024 * 1024)
    assert Settings(max_upload_bytes=300 * 1024 * 1024, upload_store="s3://b/p/").upload_store == "s3://b/p"


def test_a_full_job_with_metadata_is_not_refused_by_the_worker(db, migrated, new_tenant):
    from serving.api.uploads import save_uploads
    from serving.poison import check_payload
    from serving.schemas import IngestJob
    from serving.upload_store import is_upload_ids

    tenant = new_tenant("upmax")
    files = [{"name": f"n{i}.md", "content_base64": "bm90ZQ==", "metadata": {"i": i}} for i in range(100)]
    job = IngestJob.model_validate({"kind": "ingest", "files": files})  # as many files as the API takes
    ids = save_uploads(Settings(), db, STORE, tenant, job)
    assert len(ids) == 101  # and their folder's manifest
    check_payload({"tenant": tenant, "uploads": ids, "metadata": None}, query=False)  # what the API enqueues
    assert is_upload_ids(ids)  # so a finished job's uploads are discarded, not left to the sweep
    assert discard(db, STORE, tenant, ids) == 101


def test_two_files_of_one_name_are_refused_before_a_byte_is_stored(db, migrated, new_tenant):
    from serving.api.errors import ApiError
    from serving.api.uploads import save_uploads
    from serving.schemas import IngestJob

    tenant = new_tenant("updup")
    files = [{"name": "a.md", "content_base64": "b25l"}, {"name": "a.md", "content_base64": "dHdv"}]
    job = IngestJob.model_validate({"kind": "ingest", "files": files})  # the worker's folder would keep one
    with pytest.raises(ApiError, match="'a.md' is given twice") as refused:
        save_uploads(Settings(), db, STORE, tenant, job)
    assert refused.value.status == 422
    assert _count(migrated, tenant) == (0, 0)


# A store switched (SLUICE_UPLOAD_STORE) while jobs wait, or an API and workers configured apart: each
# file is read from, and deleted in, the store its row names, not the store this process would write to.
def test_a_worker_writing_to_a_bucket_reads_uploads_kept_in_the_database(db, migrated, new_tenant, tmp_path):
    tenant = new_tenant("upmixa")
    ids = save(db, STORE, tenant, [NewFile("a.md", 6, [b"# note"])])
    fetch(db, ObjectStore(Settings(upload_store="s3://bucket/uploads")), tenant, ids, tmp_path)
    assert (tmp_path / "a.md").read_bytes() == b"# note"
    assert discard(db, ObjectStore(Settings(upload_store="s3://bucket/uploads")), tenant, ids) == 1


def test_a_worker_writing_to_the_database_reads_and_deletes_uploads_kept_in_a_bucket(
    db, migrated, new_tenant, tmp_path, request, monkeypatch
):
    endpoint = request.getfixturevalue("s3_server")
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    in_bucket = Settings(upload_store="s3://sluice-mixed/uploads", s3_endpoint_url=endpoint)
    filesystem(in_bucket, "s3://").mkdir("sluice-mixed")
    tenant = new_tenant("upmixb")
    ids = save(db, ObjectStore(in_bucket), tenant, [NewFile("b.md", 6, [b"# note"])])
    worker = upload_store(Settings(upload_store="postgres", s3_endpoint_url=endpoint))
    fetch(db, worker, tenant, ids, tmp_path)
    assert (tmp_path / "b.md").read_bytes() == b"# note"  # not an empty file read from upload_parts
    assert discard(db, worker, tenant, ids) == 1
    fs = filesystem(in_bucket, "s3://")
    fs.invalidate_cache()
    assert fs.find(f"sluice-mixed/uploads/{tenant}") == []  # the object went with its row, not orphaned


@pytest.fixture
def bucket_store(request, monkeypatch) -> ObjectStore:
    """An object store in a fresh bucket on moto's S3 server."""
    endpoint = request.getfixturevalue("s3_server")
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    settings = Settings(upload_store="s3://sluice-orphans/uploads", s3_endpoint_url=endpoint)
    fs = filesystem(settings, "s3://")
    if not fs.exists("sluice-orphans"):
        fs.mkdir("sluice-orphans")
    return ObjectStore(settings)


def _objects(store: ObjectStore, tenant: str) -> list[str]:
    fs = filesystem(store.settings, "s3://")
    fs.invalidate_cache()
    return fs.find(f"sluice-orphans/uploads/{tenant}")


def test_every_object_is_written_after_its_row_is_committed(db, migrated, new_tenant, bucket_store):
    tenant = new_tenant("uporder")
    seen: list[tuple[int, int]] = []

    def pieces():
        # An API killed here (SIGKILL: no cleanup runs) must leave only rows the sweep finds, never an
        # object no row names: the first file's object is written, so both rows must be committed.
        seen.append((_count(migrated, tenant)[0], len(_objects(bucket_store, tenant))))
        yield b"two"

    ids = save(db, bucket_store, tenant, [NewFile("one.md", 3, [b"one"]), NewFile("two.md", 3, pieces())])
    assert seen == [(2, 1)]
    assert discard(db, bucket_store, tenant, ids) == 2
    assert _objects(bucket_store, tenant) == []


def test_a_sweep_that_cannot_delete_the_objects_keeps_their_rows_for_the_next(db, migrated, new_tenant, bucket_store):
    from tests.serving_support import free_port

    tenant = new_tenant("upsweep")
    save(db, bucket_store, tenant, [NewFile("o.md", 1, [b"o"])])
    with psycopg.connect(admin_conninfo(migrated)) as conn:
        conn.execute("UPDATE uploads SET created_at = now() - interval '3 hours' WHERE tenant_id = %s", (tenant,))
    down = ObjectStore(bucket_store.settings.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{free_port()}"}))
    with psycopg.connect(app_conninfo(migrated), autocommit=True) as conn:
        assert expire(conn, down, retention_h=2) == 0  # the bucket does not answer: logged, not raised
        assert _count(migrated, tenant) == (1, 0)  # the row still names the object
        assert len(_objects(bucket_store, tenant)) == 1
        assert expire(conn, bucket_store, retention_h=2) >= 1
    assert _count(migrated, tenant) == (0, 0) and _objects(bucket_store, tenant) == []


def test_objects_already_gone_do_not_keep_their_rows(db, migrated, new_tenant, bucket_store):
    tenant = new_tenant("upgone")
    ids = save(db, bucket_store, tenant, [NewFile("a.md", 1, [b"a"]), NewFile("b.md", 1, [b"b"])])
    filesystem(bucket_store.settings, "s3://").rm(_objects(bucket_store, tenant))  # by hand, or a lost commit
    with psycopg.connect(admin_conninfo(migrated)) as conn:  # and one row names a bucket since deleted
        conn.execute("UPDATE uploads SET location = 's3://sluice-no-bucket/u/x' WHERE upload_id = %s", (ids[1],))
    assert discard(db, bucket_store, tenant, ids) == 2
    assert _count(migrated, tenant) == (0, 0)


def test_a_job_whose_files_lie_in_two_kinds_of_store_has_each_deleted_in_its_own(
    db, migrated, new_tenant, bucket_store, tmp_path
):
    # SLUICE_UPLOAD_STORE switched from a mounted folder to a bucket while the job's files were uploaded:
    # discarding the job deletes each object through its own protocol's filesystem, not the first one's.
    tenant = new_tenant("upkinds")
    folder = ObjectStore(Settings(upload_store=f"file://{tmp_path}/store"))
    (tmp_path / "store" / tenant).mkdir(parents=True)
    ids = save(db, folder, tenant, [NewFile("f.md", 1, [b"f"])]) + save(
        db, bucket_store, tenant, [NewFile("b.md", 1, [b"b"])]
    )
    assert len(list((tmp_path / "store" / tenant).iterdir())) == 1 and len(_objects(bucket_store, tenant)) == 1
    assert discard(db, PostgresStore(bucket_store.settings), tenant, ids) == 2
    assert list((tmp_path / "store" / tenant).iterdir()) == [] and _objects(bucket_store, tenant) == []
    assert _count(migrated, tenant) == (0, 0)


@contextmanager
def undeletable(paths: list[Path]) -> Iterator[None]:
    """The files cannot be removed (immutable; or, for a user who is not root, in a read-only folder)."""
    pinned = subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True).returncode == 0
    if not pinned and os.geteuid() == 0:
        pytest.skip("chattr +i is refused here, and nothing else stops root from removing a file")
    folders = {p.parent for p in paths}
    for folder in folders if not pinned else ():
        folder.chmod(0o555)
    try:
        yield
    finally:
        if pinned:
            subprocess.run(["chattr", "-i", *map(str, paths)], check=True)
        for folder in folders if not pinned else ():
            folder.chmod(0o755)


def _attempts(migrated, tenant: str) -> list[int]:
    with psycopg.connect(admin_conninfo(migrated)) as conn:
        rows = conn.execute(
            "SELECT delete_attempts FROM uploads WHERE tenant_id = %s AND delete_failed_at IS NOT NULL", (tenant,)
        ).fetchall()
    return sorted(r[0] for r in rows)


def test_objects_that_cannot_be_deleted_do_not_hold_up_the_other_expiries(db, migrated, new_tenant, tmp_path, caplog):
    store = ObjectStore(Settings(upload_store=f"file://{tmp_path}/store"))  # a shared mount, say
    tenant = new_tenant("upstuck")
    (tmp_path / "store" / tenant).mkdir(parents=True)
    stuck = save(db, store, tenant, [NewFile(f"s{i}.md", 1, [b"s"]) for i in range(3)])
    deletable = save(db, store, tenant, [NewFile("ok.md", 2, [b"ok"])])
    with psycopg.connect(admin_conninfo(migrated)) as conn:  # the stuck ones are older: the first batch is theirs
        conn.execute(
            "UPDATE uploads SET created_at = now() - interval '3 hours' - "
            "CASE WHEN upload_id = %s THEN interval '0' ELSE interval '1 minute' END WHERE tenant_id = %s",
            (deletable[0], tenant),
        )
    files = [tmp_path / "store" / tenant / uuid.UUID(i).hex for i in stuck]
    with undeletable(files), psycopg.connect(app_conninfo(migrated), autocommit=True) as conn:
        expire(conn, store, retention_h=2, batch=2)  # more stuck uploads than one batch holds
        assert _count(migrated, tenant) == (3, 0)  # the deletable one is gone in this same pass
        assert not (tmp_path / "store" / tenant / uuid.UUID(deletable[0]).hex).exists()
        assert _attempts(migrated, tenant) == [1, 1, 1] and all(f.exists() for f in files)
        assert f"file://{files[0]}" in caplog.text and "delete the objects by hand" in caplog.text
        expire(conn, store, retention_h=2, batch=2)  # kept, not forgotten: the next pass tries them again
        assert _attempts(migrated, tenant) == [2, 2, 2]
    with psycopg.connect(app_conninfo(migrated), autocommit=True) as conn:  # once they can go, they go
        expire(conn, store, retention_h=2, batch=2)
    assert _count(migrated, tenant) == (0, 0) and not any(f.exists() for f in files)


def test_the_sweeps_functions_cannot_delete_an_upload_before_it_expires(db, migrated, new_tenant):
    from serving.upload_store import SETTLE

    tenant = new_tenant("upfresh")
    ids = save(db, STORE, tenant, [NewFile("f.md", 1, [b"f"])])
    with psycopg.connect(app_conninfo(migrated), autocommit=True) as conn:  # the app role, across tenants
        for age_s in (7200, 0):  # an age under a minute counts as one
            assert conn.execute(SETTLE, (age_s, [tenant], ids, [True])).fetchone()[0] == 0
    assert _count(migrated, tenant) == (1, 1)
    discard(db, STORE, tenant, ids)
