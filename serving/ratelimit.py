"""Per-tenant token bucket in Postgres: one UPSERT refills, spends and reports, atomically."""

from __future__ import annotations

import math

import psycopg

# Refill = tokens + rate * seconds since last update, capped at burst; spend one if at least one is there.
TAKE = """
INSERT INTO rate_buckets AS b (tenant_id, tokens, allowed, updated_at)
VALUES (%(tenant)s, %(burst)s - 1, true, clock_timestamp())
ON CONFLICT (tenant_id) DO UPDATE SET
    tokens = LEAST(%(burst)s, b.tokens + %(rate)s * EXTRACT(EPOCH FROM clock_timestamp() - b.updated_at))
             - CASE WHEN LEAST(%(burst)s, b.tokens + %(rate)s * EXTRACT(EPOCH FROM clock_timestamp() - b.updated_at))
                         >= 1 THEN 1 ELSE 0 END,
    allowed = LEAST(%(burst)s, b.tokens + %(rate)s * EXTRACT(EPOCH FROM clock_timestamp() - b.updated_at)) >= 1,
    updated_at = clock_timestamp()
RETURNING allowed, tokens
"""


def take_token(conn: psycopg.Connection, tenant: str, rate: float, burst: float) -> float:
    """Spend one request; return 0 when allowed, else the seconds until one is available."""
    allowed, tokens = conn.execute(TAKE, {"tenant": tenant, "rate": rate, "burst": burst}).fetchone()
    if allowed:
        return 0.0
    return max(0.001, (1 - tokens) / rate)


def retry_after(seconds: float) -> str:
    """A Retry-After header value (whole seconds, at least 1)."""
    return str(max(1, math.ceil(seconds)))
