"""Parsing: every file of the shared example-docs, plus csv/json/latin-1 files written here."""

from __future__ import annotations

import json

import pytest

from sluice.config import ParserConfig
from tasks.parse import SUPPORTED, parse_file
from tasks.text import decode_text, repair_mojibake
from tests.conftest import SHARED_DATA

EXAMPLES = SHARED_DATA / "example-docs"
pytestmark = pytest.mark.usefixtures("settings")  # applies the offline env before unstructured loads
SLOW = {"book-war-and-peace-1225p.txt", "handbook-872p.docx"}  # 10-20 s each on 2 busy cores
FILES = sorted(p.name for p in EXAMPLES.iterdir() if p.is_file())
# A phrase each format must yield (checks the text, not just that something came out).
EXPECTED = {
    "2023-half-year-analyses-by-segment.xlsx": "Revenue",
    "eml_family-day.eml": "family",
    "sample-presentation.pptx": "first content slide",
    "winter-sports.epub": "Winter Sports",
    "pdf_korean-text-with-tables.pdf": "다",
    "norwich-city.txt": "1985–86 season",
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in FILES])
def test_every_example_doc_parses(name):
    path = EXAMPLES / name
    assert path.suffix.lower() in SUPPORTED
    doc = parse_file(path, name, ParserConfig())
    assert doc.text.strip() and doc.elements
    for el in doc.elements:
        piece = doc.text[el.start : el.end]
        assert piece and piece == piece.strip()
    if name in EXPECTED:
        assert EXPECTED[name] in doc.text


def test_mojibake_in_norwich_city_is_repaired():
    doc = parse_file(EXAMPLES / "norwich-city.txt", "n", ParserConfig())
    assert "â\x80" not in doc.text and doc.metadata["mojibake_repaired"] > 100


def test_repair_mojibake_leaves_real_accents():
    assert repair_mojibake("Âge of the café, été") == ("Âge of the café, été", 0)
    assert repair_mojibake("1985â\x80\x9386 and â€œquotedâ€\x9d, Â£2") == ("1985–86 and “quoted”, £2", 4)


def test_decode_text_handles_latin1_and_refuses_binary():
    assert decode_text("Crème brûlée".encode("cp1252"), "x.txt") == "Crème brûlée"
    with pytest.raises(ValueError, match="x.txt holds binary bytes"):
        decode_text(b"\x00\x01" * 100, "x.txt")


def test_csv_and_json(tmp_path):
    csv = tmp_path / "prices.csv"
    csv.write_text("item,price\nbrake pads,19.90\ninner tube,6.50\n")
    doc = parse_file(csv, "prices.csv", ParserConfig())
    assert "brake pads" in doc.text and "6.50" in doc.text and doc.elements[0].kind == "Table"
    data = tmp_path / "faq.json"
    data.write_text(json.dumps([{"q": "How long is the warranty?", "a": "Two years on frames."}]))
    doc = parse_file(data, "faq.json", ParserConfig())
    assert "Two years on frames." in doc.text


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


def test_offline_nlp_matches_the_spacy_pipeline_it_replaces():
    """Same tokens, tags and sentences as spaCy on real paragraphs (abbreviations, URLs, quotes, numbers)."""
    from tasks.parse import _OfflineNLP

    texts = [p for p in (EXAMPLES / "norwich-city.txt").read_text(errors="replace").split("\n") if p.strip()][:400]
    texts += [
        "Dr. Smith saw e.g. the U.S. Capitol! Did he?\" Yes... maybe. It's 3.5 mg/kg (p<0.05). Fig. 2 don't.",
        "Archived (https://web.archive.org/web/2019/http://www.x.co.uk/a.html). The Pink'un. b. Two apps",
        "",
        "   ",
        "one sentence without an end",
    ]
    ours, reference = _OfflineNLP(), _spacy_reference()
    for text in texts:
        a, b = ours(text), reference(text)
        assert [(t.text, t.tag_) for t in a] == [(t.text, t.tag_) for t in b], text
        assert [s.text for s in a.sents] == [s.text for s in b.sents], text
