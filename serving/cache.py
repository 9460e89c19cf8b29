"""Answer cache keyed by (tenant, normalised question, filters, config id, corpus version).

The corpus version is bumped by a database trigger on every change to a tenant's chunks, so any
ingestion into a tenant makes its old entries unreachable. Rows live under the tenant's RLS policy:
a cross-tenant hit is impossible even with a colliding key.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from sluice.db import Database


def normalise_question(question: str) -> str:
    """Case-fold, NFKC and collapse whitespace; strip trailing punctuation."""
    text = unicodedata.normalize("NFKC", question).casefold()
    return re.sub(r"\s+", " ", text).strip().rstrip("?!. ")


def question_key(question: str, filters: Any, collection: str | None, config_id: str) -> str:
    """Everything of the cache key but the corpus version (hex; the tenant is the row's own column)."""
    body = [normalise_question(question), filters, collection, config_id]
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def versioned_key(base: str, corpus_version: int) -> str:
    """sha256 of `base:version`, the same digest LOOKUP computes in SQL."""
    return hashlib.sha256(f"{base}:{corpus_version}".encode()).hexdigest()


def answer_cache_key(question: str, filters: Any, collection: str | None, config_id: str, corpus_version: int) -> str:
    """The cache key of one query at one corpus version."""
    return versioned_key(question_key(question, filters, collection, config_id), corpus_version)


# The tenant's corpus version and the entry at that version, in one statement (so one pipelined round
# trip with `Database.execute_as`): the version is read in the same snapshot as the entry.
LOOKUP = """
WITH v AS (SELECT coalesce((SELECT version FROM corpus_versions), 0) AS version)
SELECT v.version, c.response FROM v LEFT JOIN answer_cache c
    ON c.cache_key = encode(sha256(convert_to(%s || ':' || v.version, 'UTF8')), 'hex')
"""


def cache_lookup(db: Database, tenant: str, base: str) -> tuple[int, dict | None]:
    """(corpus version, cached response or None) for a `question_key`, under the tenant's RLS."""
    version, response = db.execute_as(tenant, LOOKUP, (base,))[0]
    return int(version), response


def corpus_version_of(db: Database, tenant: str) -> int:
    """The tenant's corpus version in one round trip (its own pipelined transaction)."""
    rows = db.execute_as(tenant, "SELECT version FROM corpus_versions")
    return int(rows[0][0]) if rows else 0


def cache_put(conn: psycopg.Connection, tenant: str, key: str, response: dict) -> None:
    """Cache a response under `key`; the entry names the answer's record (and goes when the record expires)."""
    conn.execute(
        "INSERT INTO answer_cache (tenant_id, cache_key, response, answer_id) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT DO NOTHING",
        (tenant, key, Jsonb(response), response["answer_id"]),
    )
