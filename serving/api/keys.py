"""The key cache: key hash -> tenant, so that over-capacity requests are refused without the database.

A key's tenant never changes; only its validity does, and every admitted request re-checks that in
`authorize_request` (serving/ratelimit.py) as it spends a rate-limit token. So a stale entry changes
nothing but which refusal an over-capacity request with a just-revoked key gets (429 or 503 instead of
401) for up to KEY_TTL_S. Unknown keys are remembered too: a flood repeating one bogus key costs one
lookup per KEY_TTL_S. Lookups of uncached keys use at most `lookups` of the auth pool's connections at
once, so a flood of fresh bogus keys leaves the others to authenticated tenants' rate-limit statements.
Event-loop only (no locks): the Admit middleware is its only caller.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

from psycopg_pool import AsyncConnectionPool

from serving.api.errors import ApiError
from serving.ratelimit import resolve
from sluice import metrics

KEY_TTL_S = 60.0
KEY_CACHE_SIZE = 10_000  # ~200 bytes an entry; a flood of random keys evicts the least recently used
MAX_WAITING = 1_000  # uncached keys waiting for a lookup before more are refused with 503


class KeyCache:
    """Tenants of recently seen key hashes (None: unknown or revoked), each kept KEY_TTL_S."""

    def __init__(self, pool: AsyncConnectionPool, lookups: int):
        self.pool = pool
        self._seen: OrderedDict[str, tuple[float, str | None]] = OrderedDict()
        self._lookups = asyncio.Semaphore(lookups)
        self._waiting = 0

    async def tenant(self, token_hash: str) -> str | None:
        """The key's tenant, from the cache or one lookup; None for an unknown or revoked key."""
        seen = self._seen.get(token_hash)
        if seen is not None and time.monotonic() - seen[0] < KEY_TTL_S:
            self._seen.move_to_end(token_hash)
            return seen[1]
        tenant = await self._lookup(token_hash)
        self._seen[token_hash] = (time.monotonic(), tenant)
        self._seen.move_to_end(token_hash)
        while len(self._seen) > KEY_CACHE_SIZE:
            self._seen.popitem(last=False)
        return tenant

    def forget(self, token_hash: str) -> None:
        """Drop a key found revoked, so its next request looks it up again."""
        self._seen.pop(token_hash, None)

    async def _lookup(self, token_hash: str) -> str | None:
        if self._waiting >= MAX_WAITING:
            metrics.REJECTED.labels("key_lookups").inc()
            raise ApiError(
                503, f"{MAX_WAITING} unrecognised API keys are waiting to be checked; retry later", {"Retry-After": "1"}
            )
        self._waiting += 1
        try:
            async with self._lookups:
                return await resolve(self.pool, token_hash)
        finally:
            self._waiting -= 1
