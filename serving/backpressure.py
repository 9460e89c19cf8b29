"""Queue depth of the broker, read through kombu so it works for Redis and the Postgres transport."""

from __future__ import annotations

import json
import threading
import time

from celery import Celery

# Depth is read from the broker at most this often per queue and API process; in between, this
# process's own enqueues are added to the last reading, so a burst from one API process cannot
# overshoot the limit, and several API processes overshoot by at most what they send in 100 ms.
STALE_AFTER_S = 0.1


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
            # Declared as Celery declares it (durable, not auto-deleted): RabbitMQ refuses a redeclaration
            # with other arguments, and py-amqp's own defaults (auto_delete=True) would make the queue vanish.
            channel = conn.default_channel
            depth = channel.queue_declare(queue=queue, passive=False, durable=True, auto_delete=False).message_count
        self._seen[queue] = (time.monotonic(), depth)
        return depth

    def added(self, queue: str) -> None:
        """Count a message this process just sent, until the next reading from the broker."""
        with self._lock:
            if seen := self._seen.get(queue):
                self._seen[queue] = (seen[0], seen[1] + 1)


def oldest_age(app: Celery, queue: str) -> float | None:
    """Seconds the oldest waiting message of `queue` has waited (from its enqueue header); None when empty.

    Read from the broker itself: the last element of a Redis list, or the oldest visible row of the
    SQLAlchemy (Postgres) transport. Other transports report None.
    """
    from sluice.metrics import ENQUEUED_AT, oldest_age_redis

    with app.pool.acquire(block=True) as conn:
        channel = conn.default_channel
        if conn.transport.driver_type == "redis":
            return oldest_age_redis(channel.client, queue)
        if conn.transport.driver_type not in ("sql", "sqlalchemy"):
            return None
        q = channel._get_or_create(queue)
        msg = (
            channel.session.query(channel.message_cls)
            .filter(channel.message_cls.queue_id == q.id, channel.message_cls.visible == True)  # noqa: E712
            .order_by(channel.message_cls.sent_at, channel.message_cls.id)
            .first()
        )
        channel.session.commit()
    if msg is None:
        return None
    enqueued = json.loads(msg.payload).get("headers", {}).get(ENQUEUED_AT)
    return max(0.0, time.time() - float(enqueued)) if enqueued else None
