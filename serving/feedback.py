"""Feedback on answers: a rating (up/down), an optional correction, optionally the document/span to cite.

`record_feedback` is the one entry point (POST /v1/feedback and the MCP `feedback` tool call it). The
answer is looked up under the tenant's RLS: another tenant's answer id and an id that never existed are
the same error, with the same message. Rating an answer marks it `rated`, which keeps its record past
the answers' retention (migration 0009): rated answers are the source of `sluice feedback export`.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from sluice import metrics
from sluice.db import Database
from sluice.errors import SluiceError

RATINGS = ("up", "down")
MAX_CORRECTION = 20000
# Deliberately names no id: an unknown answer and another tenant's answer get byte-identical errors.
UNKNOWN = "no such answer for this API key: rate an `answer_id` from one of your own /v1/query responses"

INSERT = """
INSERT INTO feedback (tenant_id, feedback_id, answer_id, rating, correction, document, span_start, span_end)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
"""


class UnknownAnswerError(SluiceError):
    """The answer id is not one of this tenant's answers (or its record expired)."""

    def __init__(self) -> None:
        super().__init__(UNKNOWN)


class FeedbackError(SluiceError):
    """A feedback field is invalid; the message names the field and the fix."""


Evidence = tuple[str | None, int | None, int | None]  # document, span start, span end


def check_fields(rating: str, correction: str | None, evidence: dict | None) -> Evidence:
    """Validate rating, correction and evidence; return the evidence as (document, start, end)."""
    if rating not in RATINGS:
        raise FeedbackError(f"rating {rating!r} is not allowed: use 'up' or 'down'")
    if correction is not None and not (correction.strip() and len(correction) <= MAX_CORRECTION):
        raise FeedbackError(f"correction must be non-blank text of at most {MAX_CORRECTION} characters: fix or omit it")
    if not evidence:
        return None, None, None
    document, span = evidence.get("document"), evidence.get("span")
    if not isinstance(document, str) or not document:
        raise FeedbackError("evidence.document is missing: name the document (a citation's `document`)")
    if span is None:
        return document, None, None
    if not (isinstance(span, (list, tuple)) and len(span) == 2 and all(isinstance(i, int) for i in span)):
        raise FeedbackError("evidence.span must be [start, end], two character offsets: fix or omit it")
    if not 0 <= span[0] < span[1]:
        raise FeedbackError(f"evidence.span {list(span)} is empty or negative: use 0 <= start < end")
    return document, span[0], span[1]


def _check_document(conn: psycopg.Connection, document: str, end: int | None) -> None:
    """The named document is the tenant's, and the span lies inside its text."""
    row = conn.execute("SELECT length(text) FROM documents WHERE source_id = %s LIMIT 1", (document,)).fetchone()
    if row is None:
        raise FeedbackError(f"evidence.document {document!r} is not one of your documents: name a citation's document")
    if end is not None and end > row[0]:
        raise FeedbackError(f"evidence.span ends at {end}, past the end of {document!r} ({row[0]} characters)")


def record_feedback(
    db: Database, tenant: str, answer_id: str, rating: str, correction: str | None = None, evidence: dict | None = None
) -> dict[str, Any]:
    """Store one rating of one of `tenant`'s answers; return the stored feedback's ids, rating and config."""
    document, start, end = check_fields(rating, correction, evidence)
    feedback_id = str(uuid.uuid4())
    with db.tenant(tenant, check=False) as conn:
        # Locks the record: the retention sweep cannot delete it under this rating.
        row = conn.execute(
            "UPDATE answers SET rated = true WHERE answer_id = %s RETURNING config_id", (answer_id,)
        ).fetchone()
        if row is None:
            raise UnknownAnswerError()
        if document is not None:
            _check_document(conn, document, end)
        conn.execute(INSERT, (tenant, feedback_id, answer_id, rating, correction, document, start, end))
    metrics.FEEDBACK.labels(rating, row[0]).inc()
    return {"feedback_id": feedback_id, "answer_id": answer_id, "rating": rating, "config_id": row[0]}
