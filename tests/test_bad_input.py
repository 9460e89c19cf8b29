"""Bad input gets a clear error naming the input, and nothing already stored changes."""

from __future__ import annotations

import pytest

from sluice.errors import SourceError, UnknownTenantError
from tasks.ingest import ingest_source


def _snapshot(db, tenant):
    with db.tenant(tenant) as conn:
        return conn.execute(
            "SELECT (SELECT count(*) FROM documents), (SELECT count(*) FROM chunks), "
            "(SELECT coalesce(max(updated_at)::text, '') FROM documents)"
        ).fetchone()


@pytest.fixture()
def stocked(db, embedder, pipeline, new_tenant, tmp_path):
    tenant = new_tenant("bad")
    good = tmp_path / "good"
    good.mkdir()
    (good / "note.md").write_text("# Note\n\nThe lighthouse keeper logs every passing ship at dawn.\n")
    summary = ingest_source(db, tenant, pipeline, embedder, good, 1_000_000)
    assert summary.ingested == 1
    return tenant, _snapshot(db, tenant)


def test_unknown_tenant(db, embedder, pipeline, tmp_path):
    (tmp_path / "a.md").write_text("hello world, this is text")
    with pytest.raises(UnknownTenantError, match="'ghost'"):
        ingest_source(db, "ghost", pipeline, embedder, tmp_path, 1_000_000)


def test_empty_folder(db, embedder, pipeline, stocked, tmp_path):
    tenant, before = stocked
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match=f"{empty}.*contains no files"):
        ingest_source(db, tenant, pipeline, embedder, empty, 1_000_000)
    assert _snapshot(db, tenant) == before


def test_missing_path(db, embedder, pipeline, stocked, tmp_path):
    tenant, before = stocked
    missing = tmp_path / "nope"
    with pytest.raises(SourceError, match=f"{missing}.*does not exist"):
        ingest_source(db, tenant, pipeline, embedder, missing, 1_000_000)
    assert _snapshot(db, tenant) == before


def test_file_that_parses_to_nothing_is_recorded_and_others_go_on(db, embedder, pipeline, stocked, tmp_path):
    tenant, before = stocked
    src = tmp_path / "mixed"
    src.mkdir()
    (src / "blank.txt").write_text("   \n\n  \n")
    (src / "fine.md").write_text("# Fine\n\nOtters hold hands while they sleep so they do not drift apart.\n")
    summary = ingest_source(db, tenant, pipeline, embedder, src, 1_000_000)
    assert summary.failed == 1 and summary.ingested == 1
    err = summary.errors[0]
    assert err.source_id == "blank.txt" and err.stage == "parse" and "no text" in err.reason
    with db.tenant(tenant) as conn:
        rows = conn.execute(
            "SELECT source_id, stage FROM ingest_errors WHERE run_id = %s", (summary.run_id,)
        ).fetchall()
        assert rows == [("blank.txt", "parse")]
        sources = {r[0] for r in conn.execute("SELECT source_id FROM documents")}
    assert sources == {"note.md", "fine.md"}
    docs, chunks, _ = _snapshot(db, tenant)
    assert docs == before[0] + 1 and chunks > before[1]


def test_file_above_size_limit(db, embedder, pipeline, stocked, tmp_path):
    tenant, before = stocked
    (tmp_path / "big.txt").write_text("word " * 1000)
    summary = ingest_source(db, tenant, pipeline, embedder, tmp_path / "big.txt", 100)
    assert summary.failed == 1 and "above the limit of 100" in summary.errors[0].reason
    assert _snapshot(db, tenant) == before
