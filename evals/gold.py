"""Gold sets: questions, reference answers and gold evidence as character spans of source documents.

JSONL, one item a line:
    {"id": "q1", "question": "...", "reference_answer": "...",
     "evidence": [{"source_id": "a.md", "start": 10, "end": 42}      # a span of the parsed text
                  | {"source_id": "a.md", "quote": "exact words"}],  # resolved against stored text
     "doc_ids": ["a.md"]}                                            # optional: relevant documents
Relevance is span overlap, so one gold set scores every chunking strategy fairly.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from sluice.db import Database
from sluice.errors import ConfigError

FUZZY_MIN_SCORE = 90.0


@dataclass(frozen=True)
class Span:
    source_id: str
    start: int
    end: int


@dataclass(frozen=True)
class Evidence:
    source_id: str
    quote: str | None = None
    start: int | None = None
    end: int | None = None

    @property
    def resolved(self) -> bool:
        return self.start is not None and self.end is not None


@dataclass(frozen=True)
class GoldItem:
    id: str
    question: str
    reference: str
    evidence: tuple[Evidence, ...] = ()
    doc_ids: tuple[str, ...] = ()
    reference_contexts: tuple[str, ...] = field(default=(), compare=False)

    @property
    def spans(self) -> list[Span]:
        """Gold spans; unresolved quotes are skipped (resolve them first)."""
        return [Span(e.source_id, e.start, e.end) for e in self.evidence if e.resolved]  # type: ignore[arg-type]

    @property
    def relevant_docs(self) -> set[str]:
        return set(self.doc_ids) | {e.source_id for e in self.evidence}


def _evidence(raw: dict, where: str) -> Evidence:
    if "source_id" not in raw:
        raise ConfigError(f"{where}: evidence needs a 'source_id' (and a 'quote' or 'start'/'end')")
    if "start" in raw and "end" in raw:
        start, end = int(raw["start"]), int(raw["end"])
        if not 0 <= start < end:
            raise ConfigError(f"{where}: evidence span [{start}, {end}) is empty or negative: use 0 <= start < end")
        return Evidence(raw["source_id"], raw.get("quote"), start, end)
    if raw.get("quote"):
        return Evidence(raw["source_id"], raw["quote"])
    raise ConfigError(f"{where}: evidence of {raw['source_id']!r} has neither 'quote' nor 'start'/'end'")


def parse_item(raw: dict, where: str) -> GoldItem:
    """Validate one gold item mapping."""
    missing = [k for k in ("id", "question", "reference_answer") if k not in raw]
    if missing:
        raise ConfigError(f"{where}: missing field(s) {missing}: every item needs id, question, reference_answer")
    evidence = tuple(_evidence(e, where) for e in raw.get("evidence", []))
    doc_ids = tuple(str(d) for d in raw.get("doc_ids", []))
    if not evidence and not doc_ids:
        raise ConfigError(f"{where}: item {raw['id']!r} has no 'evidence' and no 'doc_ids': give at least one")
    return GoldItem(str(raw["id"]), raw["question"], raw["reference_answer"], evidence, doc_ids)


def load_gold(path: Path | str) -> list[GoldItem]:
    """Read a gold set from JSONL."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"gold set {str(path)!r} does not exist: pass a JSONL file")
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{n}: not valid JSON ({exc.msg}): one JSON object per line") from exc
        items.append(parse_item(raw, f"{path}:{n}"))
    if not items:
        raise ConfigError(f"gold set {str(path)!r} is empty: add at least one item")
    return items


def find_quote(text: str, quote: str) -> tuple[int, int] | None:
    """Locate a quote in text: exactly, then ignoring whitespace differences, then fuzzily."""
    start = text.find(quote)
    if start >= 0:
        return start, start + len(quote)
    words = quote.split()
    if not words:
        return None
    match = re.search(r"\s+".join(re.escape(w) for w in words), text, flags=re.IGNORECASE)
    if match:
        return match.start(), match.end()
    from rapidfuzz import fuzz

    found = fuzz.partial_ratio_alignment(quote, text, score_cutoff=FUZZY_MIN_SCORE)
    return (found.dest_start, found.dest_end) if found else None


def stored_texts(db: Database, tenant: str, source_ids: set[str]) -> dict[str, str]:
    """Parsed texts of the tenant's documents, by source id."""
    with db.tenant(tenant) as conn:
        rows = conn.execute(
            "SELECT source_id, text FROM documents WHERE source_id = ANY(%s)", (sorted(source_ids),)
        ).fetchall()
    return dict(rows)


def resolve(items: list[GoldItem], texts: dict[str, str]) -> list[GoldItem]:
    """Turn quotes into spans of the stored text; fill reference contexts from the spans."""
    out = []
    for item in items:
        evidence = []
        for ev in item.evidence:
            text = texts.get(ev.source_id)
            if text is None:
                raise ConfigError(
                    f"gold item {item.id!r}: source {ev.source_id!r} is not ingested: ingest the corpus it comes from"
                )
            if not ev.resolved:
                span = find_quote(text, ev.quote or "")
                if span is None:
                    raise ConfigError(f"gold item {item.id!r}: quote not found in {ev.source_id!r}: {ev.quote!r}")
                ev = replace(ev, start=span[0], end=span[1])
            evidence.append(ev)
        contexts = tuple(texts[e.source_id][e.start : e.end] for e in evidence)
        out.append(replace(item, evidence=tuple(evidence), reference_contexts=contexts))
    return out


def resolve_in_db(db: Database, tenant: str, items: list[GoldItem]) -> list[GoldItem]:
    """Resolve a gold set against the tenant's stored (parsed) documents."""
    sources = {e.source_id for item in items for e in item.evidence}
    return resolve(items, stored_texts(db, tenant, sources))


# ---------------------------------------------------------------- covid_qa
@dataclass(frozen=True)
class TextDocument:
    source_id: str
    text: str


def load_covid_qa(
    folder: Path | str, max_docs: int | None = None, max_questions: int | None = None
) -> tuple[list[TextDocument], list[GoldItem]]:
    """Load covid_qa: documents as raw text, questions with answer spans as gold evidence.

    With `max_docs`, only the first documents (file order) and their questions are kept.
    """
    folder = Path(folder)
    docs_path, qa_path = folder / "docs.jsonl", folder / "qa.jsonl"
    if not docs_path.is_file() or not qa_path.is_file():
        raise ConfigError(
            f"covid_qa folder {str(folder)!r} lacks docs.jsonl or qa.jsonl: point the grid's corpus at the "
            "covid_qa data set (`dataset: covid_qa`, under SLUICE_DATASETS_DIR)"
        )
    docs = [json.loads(line) for line in docs_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    docs = docs[:max_docs] if max_docs else docs
    texts = {str(d["doc_id"]): d["text"] for d in docs}
    items = []
    for line in qa_path.read_text(encoding="utf-8").splitlines():
        raw = json.loads(line) if line.strip() else None
        if raw is None or str(raw["doc_id"]) not in texts:
            continue
        items.append(_covid_item(raw, texts[str(raw["doc_id"])]))
        if max_questions and len(items) >= max_questions:
            break
    return [TextDocument(f"covid_qa/{k}", v) for k, v in texts.items()], items


def _covid_item(raw: dict, text: str) -> GoldItem:
    source_id = f"covid_qa/{raw['doc_id']}"
    evidence = []
    for ans in raw["answers"]:
        start = int(ans["answer_start"])
        evidence.append(Evidence(source_id, ans["text"], start, start + len(ans["text"])))
    contexts = tuple(text[e.start : e.end] for e in evidence)  # type: ignore[misc]
    reference = raw["answers"][0]["text"].strip()
    return GoldItem(str(raw["id"]), raw["question"], reference, tuple(evidence), (source_id,), contexts)
