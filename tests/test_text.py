"""Pure text steps: sentence spans, chunk spans, document assembly."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.config import RecursiveChunker
from tasks.chunk import make_chunker
from tasks.parse import assemble
from tasks.text import sentence_spans
from tests.conftest import is_local_address


def test_sentence_spans_split_and_trim():
    text = "  First one. Second? Third!\n\nFourth line "
    spans = sentence_spans(text)
    assert [text[s:e] for s, e in spans] == ["First one.", "Second?", "Third!", "Fourth line"]


def test_sentence_spans_keep_decimals_together():
    text = "It costs 3.5 dollars. Then more."
    assert [text[s:e] for s, e in sentence_spans(text)] == ["It costs 3.5 dollars.", "Then more."]


def test_assemble_records_element_spans():
    doc = assemble(
        "x", [("Title", " Head ", {}), ("Text", "", {}), ("NarrativeText", "Body text.", {"page": 1})], "h", {}
    )
    assert doc.text == "Head\n\nBody text."
    assert [(e.kind, doc.text[e.start : e.end]) for e in doc.elements] == [
        ("Title", "Head"),
        ("NarrativeText", "Body text."),
    ]


words = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=3000)


@settings(max_examples=60, deadline=None)
@given(text=words, size=st.integers(60, 400))
def test_recursive_chunks_are_exact_spans_of_the_text(text, size):
    doc = assemble("x", [("Text", text, {})], "h", {})
    chunks = make_chunker(RecursiveChunker(chunk_size=size, chunk_overlap=size // 5)).split(doc)
    for chunk in chunks:
        assert doc.text[chunk.start : chunk.end] == chunk.text
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    if doc.text.strip():
        assert chunks


def test_network_guard_classifies_addresses():
    assert is_local_address(("127.0.0.1", 5432)) and is_local_address(("::1", 80, 0, 0))
    assert is_local_address("/tmp/.s.PGSQL.5432") and is_local_address(("localhost", 6379))
    assert not is_local_address(("192.0.2.10", 443)) and not is_local_address(("huggingface.co", 443))
