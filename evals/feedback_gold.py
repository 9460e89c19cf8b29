"""A gold set from users' feedback (`sluice feedback export`), in the JSONL format of evals/gold.py.

Which feedback becomes which item:
- rated up, nothing else: the answer's question, its text as the reference, its cited spans as the
  evidence (one item per answer, however many up ratings it has);
- a named document/span (either rating): that document/span is the evidence; the reference is the
  correction, else the answer's text if rated up, else the text of the named span;
- a correction without a named span, rated up: the correction with the answer's cited spans;
- anything else (a bare down rating, a down-rated correction naming no evidence, a named document with
  no span, no correction and a down rating) says what was wrong but not where the answer is: skipped,
  and counted by reason.
Every item passes `evals.gold.parse_item`, so `sluice eval --gold` reads the file as it reads any gold set.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from psycopg.rows import dict_row

from evals.gold import parse_item
from sluice.db import Database

ROWS = """
SELECT f.feedback_id, f.rating, f.correction, f.document, f.span_start, f.span_end,
       a.answer_id, a.question, a.answer, a.citations, a.config_id,
       CASE WHEN f.span_start IS NOT NULL
            THEN (SELECT substr(d.text, f.span_start + 1, f.span_end - f.span_start)
                  FROM documents d WHERE d.source_id = f.document) END AS span_text
FROM feedback f JOIN answers a ON a.tenant_id = f.tenant_id AND a.answer_id = f.answer_id
ORDER BY f.created_at, f.feedback_id
"""


@dataclass
class Export:
    items: list[dict] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason -> feedback rows


def cited_evidence(citations: list[dict]) -> list[dict]:
    """An answer's citations as gold evidence spans (each distinct span once, in citation order)."""
    spans = dict.fromkeys((c["document"], int(c["span"][0]), int(c["span"][1])) for c in citations)
    return [{"source_id": s, "start": a, "end": b} for s, a, b in spans if 0 <= a < b]


def _item(item_id: str, row: dict, reference: str, evidence: list[dict], doc_ids: tuple[str, ...] = ()) -> dict:
    origin = {"answer_id": row["answer_id"], "config_id": row["config_id"]}
    if not item_id.startswith("answer-"):
        origin["feedback_id"] = row["feedback_id"]
    item = {"id": item_id, "question": row["question"], "reference_answer": reference, "evidence": evidence}
    return {**item, "doc_ids": list(doc_ids), "origin": origin} if doc_ids else {**item, "origin": origin}


def item_of(row: dict) -> tuple[dict | None, str]:
    """The gold item one feedback row makes (None and the reason when it makes none)."""
    up, own_id = row["rating"] == "up", f"feedback-{row['feedback_id']}"
    if row["document"] is not None:
        reference = row["correction"] or (row["answer"] if up else row["span_text"])
        if reference is None:
            return None, "down rating naming a document but no span or correction"
        if row["span_start"] is None:
            return _item(own_id, row, reference, [], (row["document"],)), ""
        span = {"source_id": row["document"], "start": row["span_start"], "end": row["span_end"]}
        return _item(own_id, row, reference, [span]), ""
    if not up:
        return None, "down rating without a named document" if row["correction"] else "down rating"
    evidence = cited_evidence(row["citations"])
    if not evidence:
        return None, "up rating of an answer without citations"
    if row["correction"]:
        return _item(own_id, row, row["correction"], evidence), ""
    return _item(f"answer-{row['answer_id']}", row, row["answer"], evidence), ""


def export_gold(db: Database, tenant: str) -> Export:
    """Every gold item the tenant's feedback makes, each distinct item once (oldest feedback first)."""
    with db.tenant(tenant) as conn:
        rows = conn.cursor(row_factory=dict_row).execute(ROWS).fetchall()
    out, seen = Export(), set()
    for row in rows:
        item, reason = item_of(row)
        if item is None:
            out.skipped[reason] += 1
            continue
        key = json.dumps([item["question"], item["reference_answer"], item["evidence"], item.get("doc_ids")])
        if key not in seen and item["id"] not in {i["id"] for i in out.items}:
            seen.add(key)
            parse_item(item, f"feedback {row['feedback_id']}")  # the exported file is a valid gold set
            out.items.append(item)
    return out


def write_jsonl(items: list[dict], path: Path | None) -> str:
    """The items as JSONL; written to `path` when given (its folder is created)."""
    text = "".join(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n" for item in items)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return text
