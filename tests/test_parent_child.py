"""parent_child end to end: small chunks are stored and searched, their parent section comes back as context."""

from __future__ import annotations

from sluice.config import parse_config
from tasks.ingest import ingest_source
from tasks.retrieve import dense_search
from tasks.store import parent_sections


def test_retrieved_child_returns_its_parent_section(db, embedder, new_tenant, tmp_path):
    tenant = new_tenant("parent")
    config = parse_config(
        {"chunker": {"kind": "parent_child", "parent_max_chars": 2000, "child_chars": 120, "child_overlap": 0}}
    )
    brakes = "Brake pads wear faster in the rain. " * 8 + "Replace pads thinner than three millimetres."
    gears = "Index the rear derailleur after fitting a new cable. " * 8
    (tmp_path / "bike.md").write_text(f"# Brakes\n\n{brakes}\n\n# Gears\n\n{gears}\n")
    summary = ingest_source(db, tenant, config, embedder, tmp_path, 1_000_000)
    assert summary.ingested == 1 and summary.chunks >= 6
    query = embedder.encode(["When should brake pads be replaced?"])[0]
    with db.tenant(tenant) as conn:
        hits = dense_search(conn, config.index_id, query, config.retrieval)
        parents = parent_sections(conn, [h.chunk_id for h in hits])
        doc_text = conn.execute("SELECT text FROM documents").fetchone()[0]
    top = hits[0]
    assert "pads" in top.text and len(top.text) <= 120
    parent = parents[top.chunk_id]
    assert parent == doc_text[top.metadata["parent_start"] : top.metadata["parent_end"]]
    assert top.text in parent and parent.startswith("Brakes") and "three millimetres" in parent
    assert "derailleur" not in parent
