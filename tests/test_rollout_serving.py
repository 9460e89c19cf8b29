"""Rollouts under load, end to end: real worker, real Redis broker, real HTTP, a database of their own.

The tests build on each other's champions (a chunker, then an embedder, then one tenant's own), in order.

A client asks both tenants' questions without pause while champions are promoted and rolled out: no
answer may fail or come back empty, a document uploaded mid-rollout must be answerable afterwards, an
embedder change must switch atomically (a query embedded with the wrong model fails the embedder check,
so a failed answer would show it), and a rollback must serve the previous index at once, without a stale
cached answer.
"""

from __future__ import annotations

import base64
import itertools
import threading
import time

import pytest

from serving.auth import create_key
from sluice import champion
from sluice.config import PipelineConfig
from sluice.db import Database, create_tenant
from sluice.served import served
from tasks.generate import NO_ANSWER
from tasks.rollout import run_rollout
from tests.rollout_support import SMALL, fact, private_database, promote, write_docs
from tests.serving_support import serving_stack, wait_job

DOCS = {"one": 12, "two": 6}
EMBEDDER_256 = {**SMALL, "embedder": {"dim": 256}}  # the packaged model truncated to 256-d: another space
SENTENCES = {"chunker": {"kind": "sentence", "window": 3, "overlap": 1}}


@pytest.fixture(scope="module")
def rs(settings, private_redis):
    own = private_database(settings, "sluice_rollout_serving")
    limits = {"rate_limit_per_s": 10_000.0, "rate_limit_burst": 10_000.0, "query_timeout_s": 120.0}
    # Small rollout steps, so that there is a "mid-rollout" to upload in.
    return own.model_copy(update={"broker_url": private_redis.url, "rollout_batch_docs": 3, **limits})


@pytest.fixture(scope="module")
def rdb(rs):
    database = Database(rs)
    yield database
    database.close()


@pytest.fixture(scope="module")
def api(rs, tmp_path_factory):
    with serving_stack(rs, tmp_path_factory.mktemp("worker")) as server:
        yield server


@pytest.fixture(scope="module")
def tenants(rdb, api, tmp_path_factory):
    """Two tenants whose notes were uploaded through the API under the default config (so pinned to it)."""
    keys = {}
    for name, count in DOCS.items():
        create_tenant(rdb, name)
        keys[name] = create_key(rdb, name).secret
        folder = tmp_path_factory.mktemp(name)
        first = 0 if name == "one" else 100
        _upload(api, keys[name], write_docs(folder, count, first), timeout=600)
    return keys


def _upload(api, key: str, paths, timeout: float = 300, wait: bool = True) -> str:
    files = [{"name": p.name, "content_base64": base64.b64encode(p.read_bytes()).decode()} for p in paths]
    with api.client(key) as client:
        job = client.post("/v1/jobs", json={"kind": "ingest", "files": files})
        assert job.status_code == 202, job.text
        job_id = job.json()["job_id"]
        if wait:
            assert wait_job(client, job_id, timeout)["status"] == "succeeded"
    return job_id


class Asker:
    """Asks the tenants' questions in turn, without pause, in a thread; keeps every (tenant, status, body)."""

    def __init__(self, api, keys: dict[str, str]):
        self.api, self.keys, self.seen = api, keys, []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        clients = {name: self.api.client(key, timeout=180) for name, key in self.keys.items()}
        questions = itertools.cycle([(n, fact(i)[0]) for n in self.keys for i in _facts(n)])
        while not self._stop.is_set():
            name, question = next(questions)
            r = clients[name].post("/v1/query", json={"question": question})
            self.seen.append((name, r.status_code, r.json() if r.status_code < 500 else {"detail": r.text}))
        for client in clients.values():
            client.close()

    def __enter__(self) -> Asker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join(timeout=300)

    def failures(self) -> list:
        """Answers that failed, were not ready, or found nothing."""
        bad = [s for s in self.seen if s[1] != 200 or s[2].get("answer") in (None, NO_ANSWER) or not s[2]["citations"]]
        return bad


def _facts(name: str) -> range:
    return range(DOCS[name]) if name == "one" else range(100, 100 + DOCS[name])


def _ask(api, key: str, question: str) -> dict:
    with api.client(key) as client:
        r = client.post("/v1/query", json={"question": question})
    assert r.status_code == 200, r.text
    return r.json()


def test_chunker_rollout_under_load_with_an_upload_mid_rollout(rs, rdb, api, tenants, tmp_path):
    target = promote(rdb, SMALL)
    uploaded: list[str] = []

    def upload_once(name: str, done: int, total: int, failed: int) -> None:
        if name == "one" and 0 < done < total and not uploaded:  # mid-rollout, through the API, not awaited
            uploaded.append(_upload(api, tenants["one"], write_docs(tmp_path, 1, first=50), wait=False))

    with Asker(api, tenants) as asker:
        time.sleep(2)  # answers before the rollout too
        ro = run_rollout(rs, rdb, None, "test", on_progress=upload_once)
        time.sleep(2)
    assert ro.outcomes == {"one": "switched", "two": "switched"}
    assert uploaded, "the upload was never sent mid-rollout"
    assert len(asker.seen) > 20 and not asker.failures(), asker.failures()[:3]
    assert {s[2]["index_id"] for s in asker.seen} <= {PipelineConfig().index_id, target.index_id}
    with api.client(tenants["one"]) as client:
        assert wait_job(client, uploaded[0])["status"] == "succeeded"
    for name in DOCS:
        assert served(rs, rdb, name).index_id == target.index_id
    question, place = fact(50)
    late = _ask(api, tenants["one"], question)
    assert late["index_id"] == target.index_id and place in late["answer"], late
    assert late["citations"][0]["document"] == "note-050.md"


def test_embedder_change_switches_atomically_under_load(rs, rdb, api, tenants):
    before = served(rs, rdb, "one").index_id
    target = promote(rdb, EMBEDDER_256)
    with Asker(api, tenants) as asker:
        time.sleep(1)
        ro = run_rollout(rs, rdb, None, "embedder")
        time.sleep(2)
    assert ro.outcomes == {"one": "switched", "two": "switched"}
    assert len(asker.seen) > 10 and not asker.failures(), asker.failures()[:3]
    indexes = [s[2]["index_id"] for s in asker.seen if s[0] == "one"]
    assert set(indexes) <= {before, target.index_id} and indexes[-1] == target.index_id
    switch = indexes.index(target.index_id)
    assert set(indexes[switch:]) == {target.index_id}, "once switched, a tenant never reads the old space again"
    question, place = fact(3)
    assert place in _ask(api, tenants["one"], question)["answer"]


def test_tenant_scoped_promotion_then_an_instant_rollback_without_stale_answers(rs, rdb, api, tenants):
    global_index = served(rs, rdb, "two").index_id
    own = promote(rdb, SENTENCES, tenant="one")
    assert run_rollout(rs, rdb, "one").outcomes == {"one": "switched"}
    assert served(rs, rdb, "one").index_id == own.index_id and served(rs, rdb, "two").index_id == global_index
    question = fact(5)[0]
    assert _ask(api, tenants["one"], question)["index_id"] == own.index_id
    cached = _ask(api, tenants["one"], question)
    assert cached["cached"] is True and cached["index_id"] == own.index_id
    assert champion.record_rollback(rdb, "test", tenant="one") is None  # back to the global champion
    t0 = time.perf_counter()
    assert run_rollout(rs, rdb, "one").outcomes == {"one": "switched"}
    took = time.perf_counter() - t0
    after = _ask(api, tenants["one"], question)
    assert after["cached"] is False and after["index_id"] == global_index, after
    assert took < 10, f"a rollback to a kept index took {took:.1f} s"
