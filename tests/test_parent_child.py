"""parent_child end to end: small chunks are stored and searched, their parent section comes back as context."""

from __future__ import annotations

from sluice.config import parse_config
from tasks.ingest import ingest_source
from tasks.retrieve import dense_search
from tasks.store import parent_sections

CONFIG = parse_config(
    {"chunker": {"kind": "parent_child", "parent_max_chars": 2000, "child_chars": 120, "child_overlap": 0}}
)
QUESTION = "When should brake pads be replaced?"


def _bike_manual(db, embedder, tenant: str, folder) -> str:
    """Ingest a two-section manual (brakes, gears) with CONFIG; return the stored document text."""
    brakes = "Brake pads wear faster in the rain. " * 8 + "Replace pads thinner than three millimetres."
    gears = "Index the rear derailleur after fitting a new cable. " * 8
    (folder / "bike.md").write_text(f"# Brakes\n\n{brakes}\n\n# Gears\n\n{gears}\n")
    summary = ingest_source(db, tenant, CONFIG, embedder, folder, 1_000_000)
    assert summary.ingested == 1 and summary.chunks >= 6
    with db.tenant(tenant) as conn:
        return conn.execute("SELECT text FROM documents").fetchone()[0]


def test_retrieved_child_returns_its_parent_section(db, embedder, new_tenant, tmp_path):
    tenant = new_tenant("parent")
    doc_text = _bike_manual(db, embedder, tenant, tmp_path)
    query = embedder.encode([QUESTION])[0]
    with db.tenant(tenant) as conn:
        hits = dense_search(conn, CONFIG.index_id, query, CONFIG.retrieval)
        parents = parent_sections(conn, [h.chunk_id for h in hits])
    top = hits[0]
    assert "pads" in top.text and len(top.text) <= 120
    parent = parents[top.chunk_id]
    assert parent == doc_text[top.metadata["parent_start"] : top.metadata["parent_end"]]
    assert top.text in parent and parent.startswith("Brakes") and "three millimetres" in parent
    assert "derailleur" not in parent


def test_answers_read_parent_sections_once_with_the_matching_child_cited_inside(db, embedder, new_tenant, tmp_path):
    from tasks.answer import answer_question
    from tasks.llm.openai import cited

    tenant = new_tenant("parents")
    doc_text = _bike_manual(db, embedder, tenant, tmp_path)
    result = answer_question(db, tenant, CONFIG, embedder, QUESTION)
    sections = [(h.document_id, h.start) for h in result.hits]
    assert len(sections) == len(set(sections)) == 2  # five children retrieved, two sections handed on
    top = result.hits[0]
    assert top.text == doc_text[top.start : top.end] and top.text.startswith("Brakes") and "derailleur" not in top.text
    assert len(top.metadata["children"]) >= 2
    assert top.start <= top.cite[0] < top.cite[1] <= top.end and "pads" in doc_text[top.cite[0] : top.cite[1]]
    quoted = result.answer.citations[0]  # the extractive answer quotes a sentence of the section
    assert top.start <= quoted.start < quoted.end <= top.end
    llm = cited("Replace them below 3 mm [1].", [top])[0]  # an LLM's [n] cites the matching child
    assert (llm.start, llm.end) == top.cite
