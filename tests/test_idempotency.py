"""Re-runs, changes, deletions and crashes: the stored state always equals a clean run's."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import numpy as np

from sluice.config import parse_config
from tasks.ingest import ingest_source
from tests.conftest import tenant_rows


def _write_corpus(folder, n, words=40):
    folder.mkdir(exist_ok=True)
    for i in range(n):
        body = " ".join(f"Topic {i} sentence {j} about river otters and bicycles." for j in range(words // 8))
        (folder / f"doc-{i:03d}.md").write_text(f"# Document {i}\n\n{body}\n")


def _vectors(db, tenant, index_id) -> np.ndarray:
    """The tenant's unit vectors in (source, ordinal) order."""
    with db.tenant(tenant) as conn:
        rows = conn.execute(
            "SELECT c.embedding::real[] FROM chunks c JOIN documents d USING (document_id) "
            "WHERE c.index_id = %s ORDER BY d.source_id, c.ordinal",
            (index_id,),
        ).fetchall()
    vectors = np.array([r[0] for r in rows], dtype=np.float64)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _state(db, tenant, index_id, vectors: bool = True):
    """Everything ingest stores for a tenant, without ids or timestamps (and without the vectors if not `vectors`)."""
    vector = "c.embedding::text" if vectors else "NULL"
    with db.tenant(tenant) as conn:
        docs = conn.execute("SELECT source_id, content_hash, text FROM documents ORDER BY source_id").fetchall()
        chunks = conn.execute(
            f"SELECT d.source_id, c.ordinal, c.char_start, c.char_end, c.text, {vector} FROM chunks c "  # noqa: S608
            "JOIN documents d USING (document_id) WHERE c.index_id = %s ORDER BY 1, 2",
            (index_id,),
        ).fetchall()
        indexed = conn.execute(
            "SELECT d.source_id, i.content_hash, i.chunk_count FROM indexed_documents i "
            "JOIN documents d USING (document_id) ORDER BY 1"
        ).fetchall()
    return docs, chunks, indexed


def test_changed_document_is_replaced_atomically(db, embedder, pipeline, new_tenant, tmp_path):
    tenant = new_tenant("atomic")
    config = parse_config({"chunker": {"kind": "recursive", "chunk_size": 60, "chunk_overlap": 0}})
    path = tmp_path / "log.md"
    path.write_text(" ".join(f"OLD entry {i} of the ship log." for i in range(400)))
    ingest_source(db, tenant, config, embedder, tmp_path, 10_000_000)
    old = _snapshot(db, tenant)
    path.write_text(" ".join(f"NEW entry {i} of the ship log, amended." for i in range(300)))
    seen, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            seen.append(_snapshot(db, tenant))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        summary = ingest_source(db, tenant, config, embedder, tmp_path, 10_000_000)
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    new = _snapshot(db, tenant)
    assert summary.updated == 1 and new != old and len(old[0][1]) > 50
    assert len(seen) > 5
    mixed = [s for s in seen if s not in (old, new)]
    assert not mixed, "a reader saw a half-replaced document"
    assert new in seen


TEXTS = (
    "SELECT d.text, array_agg(c.text ORDER BY c.ordinal) FROM documents d JOIN chunks c USING (document_id) "
    "GROUP BY d.text"
)


def _snapshot(db, tenant):
    return tenant_rows(db, tenant, TEXTS)


def test_sync_deletes_vanished_documents_only(db, embedder, pipeline, new_tenant, tmp_path):
    tenant = new_tenant("sync")
    _write_corpus(tmp_path / "c", 3)
    ingest_source(db, tenant, pipeline, embedder, tmp_path / "c", 1_000_000)
    (tmp_path / "c" / "doc-001.md").unlink()
    kept = ingest_source(db, tenant, pipeline, embedder, tmp_path / "c", 1_000_000)
    assert kept.deleted == 0 and kept.unchanged == 2
    with db.tenant(tenant) as conn:
        assert conn.execute("SELECT count(*) FROM documents").fetchone()[0] == 3
    synced = ingest_source(db, tenant, pipeline, embedder, tmp_path / "c", 1_000_000, sync=True)
    assert synced.deleted == 1 and synced.unchanged == 2
    with db.tenant(tenant) as conn:
        assert {r[0] for r in conn.execute("SELECT source_id FROM documents")} == {"doc-000.md", "doc-002.md"}
        assert (
            conn.execute(
                "SELECT count(*) FROM chunks c JOIN documents d USING (document_id) WHERE d.source_id = 'doc-001.md'"
            ).fetchone()[0]
            == 0
        )


def test_rechunking_reuses_the_embedding_cache(db, embedder, new_tenant, tmp_path):
    tenant = new_tenant("cache")
    _write_corpus(tmp_path / "c", 4)
    first = parse_config({"chunker": {"kind": "recursive", "chunk_size": 1000, "chunk_overlap": 100}})
    ingest_source(db, tenant, first, embedder, tmp_path / "c", 1_000_000)
    calls = embedder.calls
    # Another chunker, another index; every chunk text is one the cache already holds.
    second = parse_config({"chunker": {"kind": "structure", "max_chars": 1000, "min_chars": 0}})
    summary = ingest_source(db, tenant, second, embedder, tmp_path / "c", 1_000_000)
    assert second.index_id != first.index_id
    assert summary.ingested == 4 and summary.chunks > 0 and summary.embedded == 0
    assert embedder.calls == calls, "identical texts must come from the cache"


def test_sigkill_mid_run_then_rerun_equals_a_clean_run(db, embedder, pipeline, new_tenant, tmp_path, migrated, cli):
    crashed, clean = new_tenant("crash"), new_tenant("clean")
    corpus = tmp_path / "c"
    _write_corpus(corpus, 40, words=80)
    small_batches = migrated.model_copy(update={"ingest_batch_chunks": 2})
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    proc = cli.popen("ingest", str(corpus), "--tenant", crashed, settings=small_batches, **quiet)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            with db.tenant(crashed) as conn:
                if conn.execute("SELECT count(*) FROM documents").fetchone()[0] >= 3:
                    break
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with db.tenant(crashed) as conn:
        partial = conn.execute("SELECT count(*) FROM documents").fetchone()[0]
    assert 3 <= partial < 40, f"the kill must land mid-run ({partial} of 40 stored)"
    again = ingest_source(db, crashed, pipeline, embedder, corpus, 1_000_000)
    assert again.unchanged == partial and again.ingested == 40 - partial and again.failed == 0
    ingest_source(db, clean, pipeline, embedder, corpus, 1_000_000)
    assert _state(db, crashed, pipeline.index_id, False) == _state(db, clean, pipeline.index_id, False)
    # The vectors: the crashed run embedded its chunks in batches of 2, the clean one in one batch, and a
    # text's vector depends on its batch's padded length in the last bits (float32: ~1e-7; bfloat16 on
    # AMX: ~5e-4, cosine >= 0.99999; docs/retrieval.md "Embedder precision"). Same chunks, same space.
    a, b = (_vectors(db, t, pipeline.index_id) for t in (crashed, clean))
    assert a.shape == b.shape and a.shape[0] >= 40
    assert float(np.min(np.sum(a * b, axis=1))) >= 0.9999
