"""Queue depth of the broker, read through kombu so it works for Redis and the Postgres transport."""

from __future__ import annotations

import threading
import time

from celery import Celery

STALE_AFTER_S = 0.2  # depth is read at most this often per queue and API process


class QueueDepth:
    """Messages waiting (not yet reserved by a worker) in a queue, briefly cached."""

    def __init__(self, app: Celery):
        self.app = app
        self._seen: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def __call__(self, queue: str) -> int:
        now = time.monotonic()
        seen = self._seen.get(queue)
        if seen and now - seen[0] < STALE_AFTER_S:
            return seen[1]
        with self._lock, self.app.pool.acquire(block=True) as conn:
            depth = conn.default_channel.queue_declare(queue=queue, passive=False).message_count
        self._seen[queue] = (time.monotonic(), depth)
        return depth

    def forget(self) -> None:
        self._seen.clear()
