"""Answers' records: every answer a worker makes gets a stable id and a row in `answers` (migration 0009).

The id is derived from the job id, so a redelivered task (a lost worker, a retry) rewrites the same
record instead of leaving a second one; an answer with no job (a direct call) gets a random id.
A cache hit hands out the cached answer's id: the cached entry names its record (ON DELETE CASCADE).
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

# Namespace of answer ids derived from job ids (any fixed UUID; changing it changes every derived id).
ANSWER_NAMESPACE = uuid.UUID("6f1c7a52-5b7e-4d7e-9a43-2f0e8c1d9b10")

STORE = """
INSERT INTO answers (tenant_id, answer_id, job_id, question, filters, collection, config_id, index_id,
                     citations, answer)
VALUES (%(tenant)s, %(answer_id)s, %(job_id)s, %(question)s, %(filters)s, %(collection)s, %(config_id)s,
        %(index_id)s, %(citations)s, %(answer)s)
ON CONFLICT (tenant_id, answer_id) DO UPDATE SET
    config_id = EXCLUDED.config_id, index_id = EXCLUDED.index_id,
    citations = EXCLUDED.citations, answer = EXCLUDED.answer
"""


def answer_id_for(job_id: str | None) -> str:
    """The answer id of a job's answer (the same on every delivery of the job); random without a job."""
    return str(uuid.uuid5(ANSWER_NAMESPACE, job_id) if job_id else uuid.uuid4())


def cited(citations: list[dict]) -> list[dict]:
    """What a record keeps of each citation: the document (source and public id) and the span."""
    return [{"document": c["document"], "document_id": c["document_id"], "span": list(c["span"])} for c in citations]


def store_answer(conn: psycopg.Connection, tenant: str, job_id: str | None, payload: dict, response: dict) -> None:
    """Record the answer `response` (which carries its `answer_id`) to the question in `payload`."""
    filters: Any = payload.get("filters")
    conn.execute(
        STORE,
        {
            "tenant": tenant,
            "answer_id": response["answer_id"],
            "job_id": job_id,
            "question": payload["question"],
            "filters": Jsonb(filters) if filters is not None else None,
            "collection": payload.get("collection"),
            "config_id": response["config_id"],
            "index_id": response["index_id"],
            "citations": Jsonb(cited(response["citations"])),
            "answer": response["answer"],
        },
    )
