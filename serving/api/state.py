"""What every request of one API process shares: settings, pools, the Celery client, result waits."""

from __future__ import annotations

import threading
import uuid
from typing import Annotated

from fastapi import Depends, Request

from serving.api.keys import KeyCache
from serving.backpressure import QueueDepth
from serving.celery_app import INGEST_QUEUE, QUERY_QUEUE, create_celery
from serving.ratelimit import auth_pool
from serving.results import ResultWaiter
from serving.upload_store import upload_store
from sluice.db import Database
from sluice.settings import Settings


class Slots:
    """A counter of taken slots; take() is atomic."""

    def __init__(self, size: int):
        self.size, self.taken, self._lock = size, 0, threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.taken >= self.size:
                return False
            self.taken += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self.taken -= 1


class TenantSlots:
    """Requests in flight per tenant, each tenant at most `size` (event loop only: no lock)."""

    def __init__(self, size: int):
        self.size, self.taken = size, {}

    def take(self, tenant: str) -> bool:
        held = self.taken.get(tenant, 0)
        if held >= self.size:
            return False
        self.taken[tenant] = held + 1
        return True

    def give_back(self, tenant: str) -> None:
        held = self.taken.pop(tenant) - 1
        if held:
            self.taken[tenant] = held


class ApiState:
    """What every request needs: settings, the app-role pool, the Celery client, queue depth, result waits."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.db = Database(settings)
        self.celery = create_celery(settings)
        self.uploads = upload_store(settings)  # where uploaded files wait for a worker
        self.depth = QueueDepth(self.celery)
        self.results = ResultWaiter(self.celery)
        self.auth = auth_pool(settings)  # opened by the app's lifespan, inside the event loop
        # Half the auth pool at most for keys not yet cached: a bogus-key flood leaves the rest to tenants.
        self.keys = KeyCache(self.auth, lookups=max(1, settings.pool_max_size // 2))
        self.tenant_slots = TenantSlots(settings.tenant_concurrency)
        # Queries this process holds open while a worker answers. Checked and taken atomically: the broker
        # depth alone let a whole thread pool's worth of simultaneous requests in before any was queued.
        self.waiting = Slots(settings.queue_limit)

    def warm_up(self) -> None:
        """Open the pool, the broker connection and the result listener before the first request."""
        self.db.pool  # noqa: B018 - opens and fills the pool (pool_min_size connections)
        with self.celery.producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=1)
        for queue in (QUERY_QUEUE, INGEST_QUEUE):
            self.depth(queue)
        with self.results.expect(str(uuid.uuid4())):
            pass

    def close(self) -> None:
        self.results.close()
        self.db.close()


async def _state(request: Request) -> ApiState:
    # async: a plain attribute read needs no trip through the thread pool.
    return request.app.state.sluice


State = Annotated[ApiState, Depends(_state)]
