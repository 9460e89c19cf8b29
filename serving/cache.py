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


def answer_cache_key(question: str, filters: Any, collection: str | None, config_id: str, corpus_version: int) -> str:
    """The cache key of one query (the tenant is the row's own column)."""
    body = [normalise_question(question), filters, collection, config_id, corpus_version]
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def corpus_version(conn: psycopg.Connection) -> int:
    """The tenant's corpus version (0 before its first ingestion); needs a tenant transaction."""
    row = conn.execute("SELECT version FROM corpus_versions").fetchone()
    return int(row[0]) if row else 0


def corpus_version_of(db: Database, tenant: str) -> int:
    """The tenant's corpus version in one round trip (its own pipelined transaction)."""
    rows = db.execute_as(tenant, "SELECT version FROM corpus_versions")
    return int(rows[0][0]) if rows else 0


def cache_get(conn: psycopg.Connection, key: str) -> dict | None:
    row = conn.execute("SELECT response FROM answer_cache WHERE cache_key = %s", (key,)).fetchone()
    return row[0] if row else None


def cache_put(conn: psycopg.Connection, tenant: str, key: str, response: dict) -> None:
    conn.execute(
        "INSERT INTO answer_cache (tenant_id, cache_key, response) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
        (tenant, key, Jsonb(response)),
    )
