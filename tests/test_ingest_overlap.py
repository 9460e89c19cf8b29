"""A batch is embedded group by group and each group is stored while the model embeds the next one
(`tasks.ingest.flush`): the same rows as embedding the whole batch first, failures still per document."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import psycopg
import pytest

import tasks.ingest as ingest
from sluice.errors import DocumentError
from tasks.ingest import Run, run_ingest

ONE_BATCH = 10**9  # a group as large as the batch: embed all of it, then store (the driver before groups)


class Timed:
    """The session's embedder, its encode calls recorded as (start, end) and slowed a little, so a store that
    overlaps one cannot miss it."""

    def __init__(self, inner):
        self._inner = inner
        self.spans: list[tuple[float, float]] = []

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def encode(self, texts):
        start = time.monotonic()
        vectors = self._inner.encode(texts)
        time.sleep(0.2)
        self.spans.append((start, time.monotonic()))
        return vectors


def _ingest(db, tenant, pipeline, embedder, corpus, group: int, batch: int = 10**6):
    run = Run(db, tenant, pipeline, embedder, 50_000_000, batch, store_group_chunks=group)
    return run_ingest(run, corpus)


def _rows(db, tenant) -> list[tuple]:
    with db.tenant(tenant) as conn:
        return conn.execute(
            "SELECT d.source_id, c.ordinal, c.text, c.embedding::text FROM chunks c "
            "JOIN documents d USING (document_id) ORDER BY d.source_id, c.ordinal"
        ).fetchall()


def test_groups_store_what_one_batch_stores(db, new_tenant, pipeline, embedder, sample_corpus):
    grouped, whole = new_tenant("grp"), new_tenant("one")
    calls = embedder.calls
    a = _ingest(db, grouped, pipeline, embedder, sample_corpus, group=8)
    grouped_calls, calls = embedder.calls - calls, embedder.calls
    b = _ingest(db, whole, pipeline, embedder, sample_corpus, group=ONE_BATCH)
    assert grouped_calls > embedder.calls - calls == 1, "groups of 8 chunks should take several model calls"
    same = {"run_id": "", "graph": ""}  # the first run builds the index's graph, the second finds it
    assert a.as_dict() | same == b.as_dict() | same
    assert a.ingested == len(list(sample_corpus.iterdir())) and a.failed == 0
    left, right = _rows(db, grouped), _rows(db, whole)
    assert [r[:3] for r in left] == [r[:3] for r in right] and len(left) == a.chunks
    for x, y in zip(left, right, strict=True):  # model calls of other sizes: the same vectors to float noise
        np.testing.assert_allclose(np.array(json.loads(x[3])), np.array(json.loads(y[3])), atol=1e-4)


def test_a_group_is_stored_while_the_model_embeds_the_next(
    db, new_tenant, pipeline, embedder, sample_corpus, monkeypatch
):
    timed, stores = Timed(embedder), []
    inner = ingest.store_prepared

    def store(*args, **kwargs):
        start = time.monotonic()
        try:
            return inner(*args, **kwargs)
        finally:
            stores.append((start, time.monotonic(), threading.current_thread().name))

    monkeypatch.setattr(ingest, "store_prepared", store)
    summary = _ingest(db, new_tenant("lane"), pipeline, timed, sample_corpus, group=16)
    assert summary.failed == 0 and len(stores) == summary.ingested
    assert all(name.startswith("sluice-store") for *_, name in stores), "stores should run on the store lane"
    overlapping = [s for s in stores if any(a < s[1] and s[0] < b for a, b in timed.spans)]
    assert overlapping, f"no store ran while the model embedded: stores {stores}, encodes {timed.spans}"
    assert max(s[1] for s in stores) > max(b for _, b in timed.spans), "a group was stored before it was embedded?"


def test_a_document_refused_in_one_group_does_not_stop_the_next_groups(
    db, new_tenant, pipeline, embedder, sample_corpus, monkeypatch
):
    inner, victim = ingest.store_prepared, "returns-policy.md"

    def store(db_, tenant, config, key, prep, *args, **kwargs):
        if prep.item.source_id == victim:
            raise DocumentError(victim, "store", "DataError: refused for the test")
        return inner(db_, tenant, config, key, prep, *args, **kwargs)

    monkeypatch.setattr(ingest, "store_prepared", store)
    tenant = new_tenant("bad")
    summary = _ingest(db, tenant, pipeline, embedder, sample_corpus, group=8)
    assert summary.failed == 1 and summary.errors[0].source_id == victim
    assert summary.ingested == len(list(sample_corpus.iterdir())) - 1
    assert victim not in {r[0] for r in _rows(db, tenant)}


def test_a_database_error_on_the_store_lane_stops_the_batch_and_reaches_the_caller(
    db, new_tenant, pipeline, embedder, sample_corpus, monkeypatch
):
    """Not a document's fault: the caller (the flow's retried task, a worker's retry) sees it and redoes the batch."""
    inner, victim = ingest.store_prepared, "returns-policy.md"

    def store(db_, tenant, config, key, prep, *args, **kwargs):
        if prep.item.source_id == victim:
            raise psycopg.OperationalError("the server closed the connection (for the test)")
        return inner(db_, tenant, config, key, prep, *args, **kwargs)

    monkeypatch.setattr(ingest, "store_prepared", store)
    with pytest.raises(psycopg.OperationalError, match="for the test"):
        _ingest(db, new_tenant("down"), pipeline, embedder, sample_corpus, group=8)
