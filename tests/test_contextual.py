"""Contextual headers and the token cap: what the embedder and lexical index read, what is stored and counted."""

from __future__ import annotations

import numpy as np
import pytest

from sluice.config import PipelineConfig, parse_config
from sluice.errors import ConfigError
from tasks.chunk import make_chunker
from tasks.chunk_context import contextual_header
from tasks.embed import token_counts
from tasks.parse import assemble
from tasks.retrieve import retrieve
from tests.test_chunk import CONFIGS

OTTERS = " ".join(
    f"Otter family {i} hunts fish at dawn in the cold river and rests in a holt under the alder roots."
    for i in range(40)
)
GUIDE = f"# Field guide\n\n## Otters\n\n{OTTERS}\n\n## Beavers\n\nBeavers build dams of sticks and mud."


def _config(contextual: bool, max_tokens: str | int | None = None, **chunker) -> PipelineConfig:
    body = {"kind": "recursive", "chunk_size": 400, "chunk_overlap": 0, **chunker}
    return parse_config({"chunker": {**body, "contextual": contextual, "max_tokens": max_tokens}})


def _stored(db, tenant: str, index_id: str) -> list[tuple]:
    with db.tenant(tenant) as conn:
        return conn.execute(
            "SELECT ordinal, char_start, char_end, text, metadata, embedding::text FROM chunks "
            "WHERE index_id = %s ORDER BY document_id, ordinal",
            (index_id,),
        ).fetchall()


def test_header_names_title_section_and_file():
    doc = assemble("guides/wildlife.md", [("NarrativeText", GUIDE, {})], "h", {"filename": "wildlife.md"})
    at_beavers = GUIDE.index("Beavers build")
    assert contextual_header(doc, at_beavers) == "Title: Field guide\nSection: Beavers\nFile: wildlife.md"
    plain = assemble("covid_qa/630", [("NarrativeText", "A short study title\n\nBody text here.", {})], "h", {})
    assert contextual_header(plain, 20) == "Title: A short study title\nFile: 630"


def test_contextual_changes_embeddings_and_lexical_text_not_spans_or_answers(db, new_tenant, embedder, tmp_path):
    from tasks.answer import answer_question
    from tasks.ingest import ingest_source

    tenant = new_tenant()
    (tmp_path / "wildlife.md").write_text(GUIDE)
    plain, ctx = _config(False), _config(True)
    assert plain.index_id != ctx.index_id
    for config in (plain, ctx):
        assert ingest_source(db, tenant, config, embedder, tmp_path, 1_000_000).failed == 0
    a, b = _stored(db, tenant, plain.index_id), _stored(db, tenant, ctx.index_id)
    assert [r[:3] for r in a] == [r[:3] for r in b], "the stored spans must not move"
    for (_, _, _, text, meta, vec), (_, _, _, ctext, cmeta, cvec) in zip(a, b, strict=True):
        header = ctext[: cmeta["context_chars"]]
        assert header.startswith("Title: ") and "File: wildlife.md" in header
        assert ctext[cmeta["context_chars"] :] == text and "context_chars" not in meta
        assert vec != cvec, "the header must change what is embedded"
    # "guide" is in the title, so only the first chunk's own text holds it; every contextual header does.
    qvec = embedder.encode(["guide"])[0]
    lexical = {"mode": "lexical", "k": 50}
    with db.tenant(tenant) as conn:
        own = retrieve(conn, plain.index_id, "guide", qvec, plain.retrieval.model_copy(update=lexical))
        hits = retrieve(conn, ctx.index_id, "guide", qvec, ctx.retrieval.model_copy(update=lexical))
    assert [h.start for h in own] == [0] and len(hits) == len(b) > 3
    own_text = {(s, e): text for _, s, e, text, *_ in a}
    assert all(h.text == own_text[h.start, h.end] for h in hits), "hits carry the chunk's own text"
    result = answer_question(db, tenant, ctx, embedder, "Where do otters rest?")
    assert result.hits and all(h.text == own_text[h.start, h.end] for h in result.hits)
    assert "Title:" not in result.answer.text and "wildlife.md" not in result.answer.text


def test_truncated_chunks_are_counted_and_auto_caps_them(db, new_tenant, embedder, tmp_path):
    from tasks.ingest import ingest_source

    tenant = new_tenant()
    (tmp_path / "long.txt").write_text(f"{OTTERS}\n\nA short closing note about beavers.")
    long_chunk = _config(False, chunk_size=20000, chunk_overlap=0)
    summary = ingest_source(db, tenant, long_chunk, embedder, tmp_path, 1_000_000)
    texts = [r[3] for r in _stored(db, tenant, long_chunk.index_id)]
    counts = token_counts(embedder.tokenizer, texts)
    assert len(texts) == 1 and counts[0] > embedder.window == 256, "the crafted chunk must exceed the window"
    assert summary.truncated == 1 and summary.as_dict()["truncated"] == 1

    capped = _config(True, "auto", chunk_size=20000, chunk_overlap=0)
    summary = ingest_source(db, tenant, capped, embedder, tmp_path, 1_000_000)
    rows = _stored(db, tenant, capped.index_id)
    counts = token_counts(embedder.tokenizer, [r[3] for r in rows])  # stored text = header + chunk, as embedded
    assert summary.truncated == 0 and len(rows) > 1 and max(counts) <= 256
    assert max(counts) > 200, "pieces should fill the window, not be needlessly small"
    text = (tmp_path / "long.txt").read_text()
    assert all(text[r[1] : r[2]] == r[3][r[4]["context_chars"] :] for r in rows)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_every_kind_caps_at_max_tokens_with_its_header(kind, embedder):
    config = CONFIGS[kind].model_copy(update={"contextual": True, "max_tokens": 64})
    doc = assemble("guides/wildlife.md", [("NarrativeText", GUIDE, {})], "h", {"filename": "wildlife.md"})
    chunks = make_chunker(config, embedder).split(doc)
    counts = token_counts(embedder.tokenizer, [c.embed_text for c in chunks])
    assert max(counts) <= 64 and all(c.context and doc.text[c.start : c.end] == c.text for c in chunks)
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    uncapped = make_chunker(CONFIGS[kind], embedder).split(doc)
    covered = np.zeros(len(doc.text), bool)
    for c in chunks:
        covered[c.start : c.end] = True
    words = [i for c in uncapped for i in range(c.start, c.end) if not doc.text[i].isspace()]
    assert covered[words].all(), "capping must not drop text"


def test_max_tokens_needs_the_tokenizer_and_room_after_the_header(embedder):
    with pytest.raises(ConfigError, match="needs the embedder"):
        make_chunker(_config(False, 100).chunker)
    doc = assemble("a/very/long/file-name-that-fills-the-header.md", [("NarrativeText", GUIDE, {})], "h", {})
    with pytest.raises(ConfigError, match="raise max_tokens"):
        make_chunker(_config(True, 16).chunker, embedder).split(doc)
    with pytest.raises(ConfigError, match="max_tokens"):
        parse_config({"chunker": {"kind": "recursive", "max_tokens": 4}})
