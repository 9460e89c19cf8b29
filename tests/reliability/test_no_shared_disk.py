"""API and worker share no disk: each has a data_dir of its own, and they meet only in the database and broker.

The API stores uploads in the upload store (the database here), the job message carries their ids, and
the worker fetches them into a temporary folder of its own: the API's folder is never read, the
worker's never written by the API, and the uploads are gone once the job has finished.
"""

from __future__ import annotations

import base64

import pytest

from sluice.db import admin_conninfo
from tests.serving_support import keyed_tenant, run_job, serving_stack

NOTES = {
    "kestrels.md": "# Kestrels\n\nKestrels hover over verges, scanning the grass for voles.\n",
    "otters.md": "# Otters\n\nOtters juggle pebbles on the riverbank between meals.\n",
}


def _files_under(folder) -> list[str]:
    """Every file and folder below `folder` (an upload folder of the old design left `uploads/<tenant>/`)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def split_hosts(stack_settings, migrated, tmp_path_factory):
    """An API and a worker with different data_dirs, both given only the database and broker addresses."""
    database = {"database_url": admin_conninfo(migrated)}
    api_dir, worker_dir = tmp_path_factory.mktemp("api-host"), tmp_path_factory.mktemp("worker-host")
    api = stack_settings("api-host", data_dir=api_dir, **database)
    worker = api.model_copy(update={"data_dir": worker_dir})
    with serving_stack(api, tmp_path_factory.mktemp("logs"), worker_settings=worker) as stack:
        yield stack, api_dir, worker_dir


def test_a_worker_with_another_data_dir_ingests_an_upload(split_hosts, db):
    stack, api_dir, worker_dir = split_hosts
    tenant, key = keyed_tenant(db, "split")
    files = [{"name": n, "content_base64": base64.b64encode(t.encode()).decode()} for n, t in NOTES.items()]
    with stack.client(key, timeout=120) as client:
        done = run_job(client, {"kind": "ingest", "files": files})
        assert done["result"]["ingested"] == 2 and done["result"]["failed"] == 0, done
        answer = run_job(client, {"kind": "query", "question": "What do otters juggle?"})
    assert "pebbles" in answer["result"]["answer"], answer
    with db.tenant(tenant) as conn:
        sources = {r[0] for r in conn.execute("SELECT source_id FROM documents")}
        left = conn.execute("SELECT count(*) FROM uploads").fetchone()[0]
    assert sources == set(NOTES)
    assert left == 0, "the finished job's uploads were not deleted"
    # Nothing about the job touched either host's folder: no upload was written to, or read from, disk there.
    assert _files_under(api_dir) == [] and _files_under(worker_dir) == []


def test_bad_base64_in_the_second_file_stores_nothing(split_hosts, db):
    stack, api_dir, _ = split_hosts
    tenant, key = keyed_tenant(db, "splitbad")
    good = base64.b64encode(b"# fine\n\nfine\n").decode()
    files = [{"name": "good.md", "content_base64": good}, {"name": "bad.md", "content_base64": "!!!!" * 8}]
    with stack.client(key) as client:
        r = client.post("/v1/jobs", json={"kind": "ingest", "files": files})
    assert r.status_code == 422 and "bad.md" in r.text, r.text
    with db.tenant(tenant) as conn:
        assert conn.execute("SELECT count(*) FROM uploads").fetchone()[0] == 0
    assert _files_under(api_dir) == []
