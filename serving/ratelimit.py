"""Authentication and the per-tenant token bucket in one statement (SQL function `authorize_request`).

One round trip per admitted request: the key hash resolves to its tenant and that tenant's bucket is
refilled and spent atomically in Postgres. The API's key cache (serving/api/keys.py) only lets
refusals for capacity skip the database; every admitted request still passes through this statement,
so a revoked key is refused from its very next admitted request (revocation latency 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from sluice.db import app_conninfo
from sluice.settings import Settings


@dataclass(frozen=True)
class Authorized:
    tenant: str | None  # None: unknown or revoked key
    wait_s: float  # 0 when allowed, else seconds until a token is available


async def authorize(pool: AsyncConnectionPool, token_hash: str, rate: float, burst: float) -> Authorized:
    """Resolve a key hash to its tenant and spend one request of that tenant's rate limit.

    Async, on the event loop: a request needs no thread-pool hop to authenticate.
    """
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT out_tenant, out_allowed, out_tokens FROM authorize_request(%s, %s, %s)",
            (token_hash, rate, burst),
        )
        tenant, allowed, tokens = await cur.fetchone()
    if tenant is None or allowed:
        return Authorized(tenant, 0.0)
    return Authorized(tenant, max(0.001, (1 - tokens) / rate))


async def resolve(pool: AsyncConnectionPool, token_hash: str) -> str | None:
    """The tenant of a key hash; None for an unknown or revoked key (a read: no token is spent)."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT resolve_api_key(%s)", (token_hash,))
        return (await cur.fetchone())[0]


async def _reset(conn: AsyncConnection) -> None:
    await conn.execute("RESET ALL")  # as Database's pool: nothing a statement SET outlives its checkout


def auth_pool(settings: Settings) -> AsyncConnectionPool:
    """An autocommit pool of app-role connections for `authorize` (open it inside the event loop)."""
    return AsyncConnectionPool(
        app_conninfo(settings),
        min_size=1,
        max_size=settings.pool_max_size,
        kwargs={"autocommit": True},
        reset=_reset,
        open=False,
    )


def retry_after(seconds: float) -> str:
    """A Retry-After header value (whole seconds, at least 1)."""
    return str(max(1, math.ceil(seconds)))
