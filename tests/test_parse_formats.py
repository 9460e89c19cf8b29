"""Parsing: every supported format and the shapes of real corpora, on documents the suite generates.

`tests/fixtures/make_docs.py` writes them (deterministic) once per session. The external example-docs
corpus, when SLUICE_DATASETS_DIR names it, is parsed too (the `datasets` tests at the end).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sluice.config import ParserConfig
from tasks.parse import SUPPORTED, ParsedDocument, parse_file
from tasks.text import decode_text, repair_mojibake
from tests.conftest import SAMPLE, dataset_files
from tests.fixtures import pdfs, prose
from tests.fixtures.make_docs import NAMES, write_all

pytestmark = pytest.mark.usefixtures("settings")  # applies the offline env before unstructured loads
# A phrase each generated document must yield (checks the text, not just that something came out).
EXPECTED = {
    "annual-report-10k.html": prose.TENK_LAST_CELL,
    "example-docs.rst": "XBRL 10-K",
    "family-day.eml": "first annual family day!",
    "faq.json": "Two years on frames.",
    "handbook.docx": "Ångström, naïve, Łódź",
    "ideas-page.html": "opens before work, at 7:30",
    "notes.text": "the .text extension",
    "notes.txt": "a safety check takes one hour",
    "novel.txt": prose.NOVEL_LAST_LINE,
    "prices.csv": "6.50",
    "report.pdf": "up from 1,102 in the previous quarter",
    "segments.xlsx": "Revenue H1 2023",
    "short.markdown": "parsed as Markdown too",
    "stock.tsv": "Leeds inner tube 30",
    "store-guide.md": "bank holidays follow the Sunday hours",
    "tiny.htm": "An .htm page is parsed as HTML.",
    "two-columns.pdf": "Landforms of the North",
    "wiki-mojibake.txt": "1985–86 season",
    "winter-sports.epub": "Winter Sports",
    "workshop-review.pptx": "first content slide",
}
# A table's cells in reading order, as one Table element of each format gives them.
TABLES = {
    "handbook.docx": "Rotor bolts 6 service Stem bolts 5 month",
    "workshop-review.pptx": "Part Torque (Nm) Check every Rotor bolts 6 service",
    "segments.xlsx": "E-Bikes 2210 2488.75",
    "ideas-page.html": "Idea Votes Early repair counter 41 Tool library 17",
    "store-guide.md": "Juicy Apples 1.99 739 Bananas 1.89 6",
    "prices.csv": "brake pads 19.90 fits Shimano, SRAM inner tube 6.50",
    "stock.tsv": "store item count York brake pads 12",
    "annual-report-10k.html": "Road Bikes $ ",
}


@pytest.fixture(scope="module")
def parsed(docs):
    """Parse a generated document once per module."""
    cache: dict[str, ParsedDocument] = {}

    def get(name: str) -> ParsedDocument:
        if name not in cache:
            cache[name] = parse_file(docs / name, name, ParserConfig())
        return cache[name]

    return get


def assert_spans(doc: ParsedDocument) -> None:
    assert doc.text.strip() and doc.elements
    for el in doc.elements:
        piece = doc.text[el.start : el.end]
        assert piece and piece == piece.strip()


def test_documents_cover_every_supported_suffix():
    assert {Path(n).suffix for n in NAMES} == SUPPORTED
    assert set(EXPECTED) == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_every_format_parses(parsed, name):
    doc = parsed(name)
    assert_spans(doc)
    assert EXPECTED[name] in doc.text
    assert doc.metadata["filetype"] == Path(name).suffix.lstrip(".")


@pytest.mark.parametrize("name", sorted(TABLES))
def test_tables_come_out_as_table_elements(parsed, name):
    doc = parsed(name)
    tables = [doc.text[e.start : e.end] for e in doc.elements if e.kind == "Table"]
    assert any(TABLES[name] in t for t in tables), tables[:3]


def test_pdf_pages_table_cells_and_korean(parsed):
    doc = parsed("report.pdf")
    pages = {e.metadata.get("page") for e in doc.elements}
    assert pages == {1, 2}
    page2 = " ".join(doc.text[e.start : e.end] for e in doc.elements if e.metadata.get("page") == 2)
    for row in pdfs.TABLE:
        assert all(cell in page2 for cell in row), row
    assert page2.index("Q1") < page2.index("Q2") and page2.index("1,102") < page2.index("1,240")
    assert pdfs.KOREAN in page2


def test_two_column_pdf_reads_each_column_whole(parsed):
    doc = parsed("two-columns.pdf")
    texts = [" ".join(doc.text[e.start : e.end].split()) for e in doc.elements]
    assert pdfs.LEFT_COLUMN in texts and pdfs.RIGHT_COLUMN in texts  # not interleaved line by line


def test_long_novel_parses_to_its_last_line(parsed):
    doc = parsed("novel.txt")
    assert len(doc.text) > 1_000_000  # past spaCy's max_length, which unstructured truncates to
    titles = [doc.text[e.start : e.end] for e in doc.elements if e.kind == "Title"]
    assert sum(re.fullmatch(r"CHAPTER \d+", t) is not None for t in titles) == prose.NOVEL_CHAPTERS
    assert doc.text.rstrip().endswith(prose.NOVEL_LAST_LINE)


def test_10k_filing_keeps_every_table_and_inline_xbrl_text(parsed):
    doc = parsed("annual-report-10k.html")
    tables = [doc.text[e.start : e.end] for e in doc.elements if e.kind == "Table"]
    assert len(tables) == prose.TENK_SECTIONS + 1 and all("Parts and Service $" in t for t in tables[:-1])
    assert "Commission file number: 000-30653" in doc.text and "☐" in doc.text
    assert re.search(r"\$ \(\d[\d,]*\)", doc.text)  # negative figures, in parentheses, survive


def test_mojibake_is_repaired_and_real_accents_kept(parsed):
    doc = parsed("wiki-mojibake.txt")
    assert "â\x80" not in doc.text and doc.metadata["mojibake_repaired"] >= 120
    assert "£2" in doc.text and "café in Âge-sur-Mer" in doc.text and "pp. 12–14" in doc.text


def test_generated_documents_are_byte_identical_on_every_run(docs, tmp_path):
    for path in write_all(tmp_path):
        assert path.read_bytes() == (docs / path.name).read_bytes(), path.name


def test_repair_mojibake_leaves_real_accents():
    assert repair_mojibake("Âge of the café, été") == ("Âge of the café, été", 0)
    assert repair_mojibake("1985â\x80\x9386 and â€œquotedâ€\x9d, Â£2") == ("1985–86 and “quoted”, £2", 4)


def test_decode_text_handles_latin1_and_refuses_binary():
    assert decode_text("Crème brûlée".encode("cp1252"), "x.txt") == "Crème brûlée"
    with pytest.raises(ValueError, match="x.txt holds binary bytes"):
        decode_text(b"\x00\x01" * 100, "x.txt")


def _spacy_reference():
    """The pipeline `_OfflineNLP` replaces: spaCy's blank English, its sentencizer, the verb tagger."""
    import spacy
    from spacy.language import Language

    from tasks.parse import _tag

    @Language.component("reference_verb_tagger")
    def tagger(doc):
        for token in doc:
            token.tag_ = _tag(token.text)
        return doc

    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    nlp.add_pipe("reference_verb_tagger")
    return nlp


HARD_SENTENCES = [
    "Dr. Smith saw e.g. the U.S. Capitol! Did he?\" Yes... maybe. It's 3.5 mg/kg (p<0.05). Fig. 2 don't.",
    "Archived (https://web.archive.org/web/2019/http://www.x.co.uk/a.html). The Pink'un. b. Two apps",
    "",
    "   ",
    "one sentence without an end",
]


def _paragraphs(text: str, limit: int) -> list[str]:
    return [p for p in text.split("\n") if p.strip()][:limit]


def _generated_paragraphs(docs: Path) -> list[str]:
    texts = _paragraphs((docs / "wiki-mojibake.txt").read_text(), 200)
    texts += _paragraphs((docs / "novel.txt").read_text(), 200)
    return texts + [p for md in sorted((SAMPLE / "corpus").glob("*.md")) for p in _paragraphs(md.read_text(), 100)]


@pytest.mark.parametrize("source", ["generated", pytest.param("norwich-city", marks=pytest.mark.datasets)])
def test_offline_nlp_matches_the_spacy_pipeline_it_replaces(source, request, docs):
    """Same tokens, tags and sentences as spaCy on paragraphs with abbreviations, URLs, quotes, numbers."""
    from tasks.parse import _OfflineNLP

    if source == "generated":
        texts = _generated_paragraphs(docs)
    else:
        norwich = request.getfixturevalue("dataset")("example-docs") / "norwich-city.txt"
        texts = _paragraphs(norwich.read_text(errors="replace"), 400)
    ours, reference = _OfflineNLP(), _spacy_reference()
    for text in texts + HARD_SENTENCES:
        a, b = ours(text), reference(text)
        assert [(t.text, t.tag_) for t in a] == [(t.text, t.tag_) for t in b], text
        assert [s.text for s in a.sents] == [s.text for s in b.sents], text


# ---------------------------------------------------------------- external corpus: example-docs
EXAMPLE_DOCS = dataset_files("example-docs") or ["example-docs"]  # one skipped case when SLUICE_DATASETS_DIR is unset
SLOW = {"book-war-and-peace-1225p.txt", "handbook-872p.docx"}  # 10-20 s each on 2 busy cores
EXPECTED_EXAMPLES = {
    "2023-half-year-analyses-by-segment.xlsx": "Revenue",
    "eml_family-day.eml": "family",
    "sample-presentation.pptx": "first content slide",
    "winter-sports.epub": "Winter Sports",
    "pdf_korean-text-with-tables.pdf": "다",
    "norwich-city.txt": "1985–86 season",
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in EXAMPLE_DOCS])
def test_every_example_doc_parses(dataset, name):
    path = dataset("example-docs") / name
    assert path.suffix.lower() in SUPPORTED
    doc = parse_file(path, name, ParserConfig())
    assert_spans(doc)
    if name in EXPECTED_EXAMPLES:
        assert EXPECTED_EXAMPLES[name] in doc.text


def test_mojibake_in_norwich_city_is_repaired(dataset):
    doc = parse_file(dataset("example-docs") / "norwich-city.txt", "n", ParserConfig())
    assert "â\x80" not in doc.text and doc.metadata["mojibake_repaired"] > 100
