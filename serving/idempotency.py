"""Idempotency-Key handling in Postgres (table under the tenant's RLS policy).

The first request claims (tenant, key) with INSERT … ON CONFLICT DO NOTHING; only the claimant does
the work and stores its response. Requests that lose the race wait for that response (also while
the first is still running) and replay it; a different body under the same key is refused.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass

from psycopg.types.json import Jsonb

from sluice.db import Database

PURGE_ODDS = 0.01


@dataclass(frozen=True)
class Stored:
    status_code: int
    body: dict


class KeyReused(Exception):
    """The key was used before with a different request body."""


class StillRunning(Exception):
    """The first request with this key has not finished within the wait."""


def request_hash(path: str, body: dict) -> str:
    """Hash of what makes two requests "the same": path and canonical body."""
    return hashlib.sha256(json.dumps([path, body], sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def claim(db: Database, tenant: str, key: str, req_hash: str, ttl_s: int) -> bool:
    """Claim the key for this request; False when another request holds or held it."""
    with db.tenant(tenant, check=False) as conn:
        if random.random() < PURGE_ODDS:  # amortised clean-up of this tenant's expired keys
            conn.execute("DELETE FROM idempotency_keys WHERE expires_at < now()")
        else:
            conn.execute("DELETE FROM idempotency_keys WHERE key = %s AND expires_at < now()", (key,))
        cur = conn.execute(
            "INSERT INTO idempotency_keys (tenant_id, key, request_hash, expires_at)"
            " VALUES (%s, %s, %s, now() + make_interval(secs => %s)) ON CONFLICT DO NOTHING",
            (tenant, key, req_hash, ttl_s),
        )
        return cur.rowcount == 1


def complete(db: Database, tenant: str, key: str, stored: Stored) -> None:
    """Record the response the claimant returned."""
    with db.tenant(tenant, check=False) as conn:
        conn.execute(
            "UPDATE idempotency_keys SET status_code = %s, response = %s WHERE key = %s",
            (stored.status_code, Jsonb(stored.body), key),
        )


def release(db: Database, tenant: str, key: str) -> None:
    """Forget a claim whose work was not accepted (503, 504, 5xx), so the client may retry."""
    with db.tenant(tenant, check=False) as conn:
        conn.execute("DELETE FROM idempotency_keys WHERE key = %s", (key,))


def wait_for(db: Database, tenant: str, key: str, req_hash: str, timeout_s: float) -> Stored | None:
    """The first request's response; None if its claim was released (the caller may claim again)."""
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        with db.tenant(tenant, check=False) as conn:
            row = conn.execute(
                "SELECT request_hash, status_code, response FROM idempotency_keys WHERE key = %s", (key,)
            ).fetchone()
        if row is None:
            return None
        if row[0] != req_hash:
            raise KeyReused(key)
        if row[1] is not None:
            return Stored(row[1], row[2])
        if time.monotonic() > deadline:
            raise StillRunning(key)
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)
