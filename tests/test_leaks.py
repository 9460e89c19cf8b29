"""What one tenant must not learn or reach, end to end: real `sluice serve` and `sluice worker` processes,
a private Redis, real folders and symlinks.

Named sources resolve inside the tenant's own folder `<root>/<tenant>` (another tenant's folder is
refused like a missing one) and every file read stays inside it, also when a symlink appears after
the job was accepted; /metrics needs the scrape token and shows no tenant ids when tenant labels
are off; document ids are random; INFO logs hold no question, filter, document text or secret.
"""

from __future__ import annotations

import base64
import json
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from serving.auth import create_key
from serving.celery_app import INGEST_QUEUE, create_celery
from sluice.db import create_tenant
from tests.serving_support import ApiServer, wait_job

TOKEN = "scrape-" + uuid.uuid4().hex
SECRET = f"SECRET-{uuid.uuid4().hex[:8]}"  # only in files outside every tenant's folder


@dataclass
class Stack:
    url: str
    root: Path
    outside: Path
    api_log: Path
    worker_log: Path
    settings: object
    tenants: dict[str, tuple[str, str]]  # a, b, c -> (tenant id, API key)

    def client(self, who: str, **headers: str) -> httpx.Client:
        auth = {"Authorization": f"Bearer {self.tenants[who][1]}"}
        return httpx.Client(base_url=self.url, headers={**auth, **headers}, timeout=120)

    def folder(self, who: str) -> Path:
        return self.root / self.tenants[who][0]


@pytest.fixture(scope="module")
def stack(db, stack_settings, start_stack, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("leaks")
    root, outside, prom = tmp / "root", tmp / "outside", tmp / "prom"
    for folder in (root, outside, prom):
        folder.mkdir()
    (outside / "secret.md").write_text(f"# Secret\n\nThe vault code of the other side is {SECRET}.\n")
    scrape = {"metrics_token": SecretStr(TOKEN), "metrics_tenant_labels": False}
    settings = stack_settings("leaks-test", ingest_root=root, **scrape)
    tenants = {}
    for who in "abc":
        tenant = f"leak{who}-{uuid.uuid4().hex[:8]}"
        create_tenant(db, tenant)
        tenants[who] = (tenant, create_key(db, tenant).secret)
        (root / tenant).mkdir()
    running = start_stack(settings, api_process=True, extra_env={"PROMETHEUS_MULTIPROC_DIR": str(prom)})
    return Stack(running.url, root, outside, running.api_log, running.worker_log, settings, tenants)


def ingest(client: httpx.Client, source: str) -> dict:
    r = client.post("/v1/jobs", json={"kind": "ingest", "source": source})
    assert r.status_code == 202, r.text
    return wait_job(client, r.json()["job_id"], timeout=300)


def upload(client: httpx.Client, name: str, text: str) -> dict:
    files = [{"name": name, "content_base64": base64.b64encode(text.encode()).decode()}]
    r = client.post("/v1/jobs", json={"kind": "ingest", "files": files})
    assert r.status_code == 202, r.text
    return wait_job(client, r.json()["job_id"], timeout=300)


def stored(db, tenant: str) -> tuple[set[str], dict[str, str], int]:
    """(source ids stored, recorded errors by source id, chunks quoting SECRET) of a tenant."""
    with db.tenant(tenant) as conn:
        sources = {r[0] for r in conn.execute("SELECT source_id FROM documents")}
        errors = dict(conn.execute("SELECT source_id, reason FROM ingest_errors WHERE stage = 'read'").fetchall())
        leaked = conn.execute("SELECT count(*) FROM chunks WHERE strpos(text, %s) > 0", (SECRET,)).fetchone()[0]
    return sources, errors, leaked


def detail(r: httpx.Response, name: str) -> str:
    assert r.status_code == 422, (r.status_code, r.text)
    return r.json()["detail"].replace(repr(name), "<name>")


def test_another_tenants_folder_is_refused_like_a_missing_one(stack):
    other = stack.tenants["b"][0]
    private = stack.folder("b") / "private"
    private.mkdir()
    (private / "b.md").write_text("# B\n\nTenant B's own notes.\n")
    (stack.folder("a") / "docs").mkdir()
    (stack.folder("a") / "docs" / "a.md").write_text("# A\n\nTenant A's own notes.\n")
    (stack.folder("a") / "to-b").symlink_to(private, target_is_directory=True)
    (stack.folder("a") / "to-nothing").symlink_to(stack.folder("b") / "nothing", target_is_directory=True)
    with stack.client("a") as a:
        missing = detail(a.post("/v1/jobs", json={"kind": "ingest", "source": "nothing"}), "nothing")
        for name in (f"{other}/private", "private"):
            assert detail(a.post("/v1/jobs", json={"kind": "ingest", "source": name}), name) == missing
        # A symlink of A's to B's folder: the same answer whether B's folder exists or not.
        linked = detail(a.post("/v1/jobs", json={"kind": "ingest", "source": "to-b"}), "to-b")
        assert linked == detail(a.post("/v1/jobs", json={"kind": "ingest", "source": "to-nothing"}), "to-nothing")
        assert "outside" in linked
        done = ingest(a, "docs")
    assert done["status"] == "succeeded" and done["result"]["ingested"] == 1, done


def test_symlinks_out_of_the_tenants_folder_are_recorded_failed_not_read(stack, db):
    tenant = stack.tenants["a"][0]
    mixed = stack.folder("a") / "mixed"
    (mixed / "deep" / "deeper").mkdir(parents=True)
    (mixed / "good.md").write_text("# Good\n\nDrones do not sting.\n")
    (mixed / "deep" / "ok.txt").write_text("Worker bees live about six weeks in summer.\n")
    (stack.folder("a") / "shared").mkdir()
    (stack.folder("a") / "shared" / "s.md").write_text("# Shared\n\nA note kept elsewhere in A's folder.\n")
    (mixed / "inside-link.md").symlink_to(stack.folder("a") / "shared" / "s.md")  # inside the folder: read
    (mixed / "link.md").symlink_to(stack.outside / "secret.md")
    (mixed / "deep" / "deeper" / "link2.md").symlink_to(stack.outside / "secret.md")
    (mixed / "deep" / "linkdir").symlink_to(stack.outside, target_is_directory=True)  # never followed
    with stack.client("a") as a:
        done = ingest(a, "mixed")
    assert done["status"] == "succeeded", done
    body = done["result"]
    assert body["ingested"] == 3 and body["failed"] == 2, body
    sources, errors, leaked = stored(db, tenant)
    assert {"good.md", "deep/ok.txt", "inside-link.md"} <= sources and leaked == 0
    assert not {"link.md", "deep/deeper/link2.md"} & sources
    for failed in ("link.md", "deep/deeper/link2.md"):
        assert "outside this tenant's ingest folder" in errors[failed], errors


def test_symlinks_made_after_the_job_was_accepted_are_refused_by_the_worker(stack, db):
    """The API accepts clean folders; then files are swapped for symlinks out (and a folder for one)
    before the worker reads them: the worker's own check refuses them."""
    tenant = stack.tenants["a"][0]
    later, moved = stack.folder("a") / "later", stack.folder("a") / "moved"
    later.mkdir()
    moved.mkdir()
    (later / "fine.md").write_text("# Fine\n\nQueens can live for several years.\n")
    (later / "swap.md").write_text("# Swap\n\nAn ordinary note, for now.\n")
    (moved / "note.md").write_text("# Note\n\nA note that moves.\n")
    control = create_celery(stack.settings).control
    assert control.cancel_consumer(INGEST_QUEUE, reply=True, timeout=10), "no worker stopped consuming"
    try:
        with stack.client("a") as a:
            jobs = [a.post("/v1/jobs", json={"kind": "ingest", "source": name}) for name in ("later", "moved")]
        assert [r.status_code for r in jobs] == [202, 202], [r.text for r in jobs]
        (later / "swap.md").unlink()
        (later / "swap.md").symlink_to(stack.outside / "secret.md")
        (later / "new.md").symlink_to(stack.outside / "secret.md")
        shutil.rmtree(moved)
        moved.symlink_to(stack.outside, target_is_directory=True)
    finally:
        assert control.add_consumer(INGEST_QUEUE, reply=True, timeout=10), "no worker resumed consuming"
    with stack.client("a") as a:
        done, gone = (wait_job(a, r.json()["job_id"], timeout=300) for r in jobs)
    assert done["status"] == "succeeded" and done["result"]["ingested"] == 1 and done["result"]["failed"] == 2, done
    assert gone["status"] == "failed" and "outside" in gone["error"], gone
    sources, errors, leaked = stored(db, tenant)
    assert "fine.md" in sources and "swap.md" not in sources and leaked == 0
    assert "outside this tenant's ingest folder" in errors["swap.md"] and "new.md" in errors


def scrape(url: str, **headers: str) -> httpx.Response:
    return httpx.get(f"{url}/metrics", headers=headers, timeout=30)


def test_metrics_need_the_scrape_token(stack, cli):
    assert scrape(stack.url).status_code == 401
    assert scrape(stack.url, Authorization=f"Bearer {stack.tenants['a'][1]}").status_code == 401  # not a scrape key
    assert scrape(stack.url, Authorization=f"Bearer {TOKEN}x").status_code == 401
    ok = scrape(stack.url, Authorization=f"Bearer {TOKEN}")
    assert ok.status_code == 200 and "sluice_http_requests_total" in ok.text
    status = cli("status", "--url", stack.url, "--interval", "0.2", env={"SLUICE_METRICS_TOKEN": TOKEN})
    assert status.exit_code == 0 and "workers" in status.output, status.output
    refused = cli("status", "--url", stack.url, "--interval", "0.2")
    assert refused.exit_code == 2 and "SLUICE_METRICS_TOKEN" in refused.output, refused.output


def test_without_a_token_metrics_answer_only_this_host_unforwarded(migrated):
    """No token set: a loopback client is served; a request a local proxy forwarded is not."""
    with ApiServer(migrated.model_copy(update={"metrics_token": None})) as server:
        assert scrape(server.url).status_code == 200
        assert scrape(server.url, **{"X-Forwarded-For": "203.0.113.7"}).status_code == 403
        forwarded = scrape(server.url, Forwarded="for=203.0.113.7")
        assert forwarded.status_code == 403 and "SLUICE_METRICS_TOKEN" in forwarded.json()["detail"]


def test_tenant_labels_off_hide_tenant_ids(stack):
    with stack.client("c") as c:
        assert upload(c, "hives.md", "# Hives\n\nA hive holds one queen and many workers.\n")["status"] == "succeeded"
        assert c.post("/v1/query", json={"question": "How many queens does a hive hold?"}).status_code == 200
    text = scrape(stack.url, Authorization=f"Bearer {TOKEN}").text
    assert not [t for t, _ in stack.tenants.values() if t in text]
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    tenants = {s.labels["tenant"] for s in samples if "tenant" in s.labels}
    assert tenants == {"all"}, tenants
    assert any(s.name == "sluice_query_seconds_count" and s.value >= 1 for s in samples)
    assert any(s.name == "sluice_tokens_total" for s in samples)


def first_document_id(stack, who: str, question: str, text: str) -> str:
    with stack.client(who) as client:
        assert upload(client, "first.md", text)["status"] == "succeeded"
        r = client.post("/v1/query", json={"question": question})
    assert r.status_code == 200, r.text
    return r.json()["citations"][0]["document_id"]


def test_document_ids_reveal_nothing_about_other_tenants(stack, db):
    """B's first document and C's first document, with A's ingestions in between: random UUIDs, not counts."""
    first_b = first_document_id(stack, "b", "What colour is the north hive?", "# North\n\nThe north hive is blue.\n")
    with stack.client("a") as a:
        for n in range(3):
            assert upload(a, f"filler{n}.md", f"# Filler {n}\n\nFiller note number {n}.\n")["status"] == "succeeded"
    first_c = first_document_id(stack, "c", "What colour is the south hive?", "# South\n\nThe south hive is red.\n")
    ids = [uuid.UUID(first_b), uuid.UUID(first_c)]  # ValueError for an integer id
    assert all(i.version == 4 for i in ids) and ids[0] != ids[1]
    with db.tenant(stack.tenants["b"][0]) as conn:  # the public id names B's document, inside B only
        assert conn.execute("SELECT source_id FROM documents WHERE public_id = %s", (first_b,)).fetchone() == (
            "first.md",
        )
        assert conn.execute("SELECT count(*) FROM documents WHERE public_id = %s", (first_c,)).fetchone()[0] == 0


def json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_info_logs_hold_no_question_filter_document_text_or_secret(stack):
    marker = uuid.uuid4().hex[:10]
    question, value, content = f"Which pollen {marker}q is best?", f"{marker}f", f"{marker}c"
    with stack.client("a") as a:
        assert (
            upload(a, "pollen.md", f"# Pollen\n\nClover pollen {content} is the best pollen.\n")["status"]
            == "succeeded"
        )
        answered = a.post("/v1/query", json={"question": question})
        filtered = a.post("/v1/query", json={"question": question + "?", "filters": {"doc.source": value}})
    assert answered.status_code == 200 and content in answered.json()["answer"], answered.text
    assert filtered.status_code < 500, filtered.text
    time.sleep(1)  # the worker's last lines reach its file a moment after the result
    worker, api = stack.worker_log.read_text(), stack.api_log.read_text()
    for secret in (marker, stack.tenants["a"][1], TOKEN):
        assert secret not in worker and secret not in api, secret
    lines = [r for r in json_lines(stack.worker_log) if r["level"] == "INFO"]
    assert any(r["msg"].endswith("received") for r in lines), "the worker logged no task lines at INFO"
    assert any(r["msg"].endswith(": <hidden>") for r in lines), "no task result line, or not hidden"
