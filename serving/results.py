"""Waiting for task results without polling where the backend can push.

Celery's Redis result backend PUBLISHes every stored state on the result key's channel. One
listener thread per API process holds one pub/sub connection; a request subscribes to its job's
channel *before* the task is sent, so the finishing PUBLISH cannot be missed, and sleeps on an
event the listener sets. A GET of the result key right after subscribing, and one every
`SAFETY_POLL_S` while waiting, keep it correct if a message is lost (a Redis reconnect).
Other backends (the embedded Postgres one) are polled: tightly while an answer is due, then less.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from celery import Celery, states
from celery.backends.redis import RedisBackend

log = logging.getLogger(__name__)

SAFETY_POLL_S = 0.5
KEEPALIVE_CHANNEL = "sluice-result-waiter"  # always subscribed, so no health-check PING races the listener


@dataclass
class _Slot:
    subscribed: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    meta: dict | None = None
    changed: threading.Event = field(default_factory=threading.Event)  # any new state (STREAMING pieces)
    latest: dict | None = None


class ResultWaiter:
    """Blocks a request thread until its task finishes; push (Redis) or poll (anything else)."""

    def __init__(self, app: Celery):
        self.app = app
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.Lock()
        self._pubsub = None
        self._push = isinstance(app.backend, RedisBackend)
        self.delivered = 0  # results that arrived by push (for tests and metrics)
        self.pushed_updates = 0  # states handed to `updates` callers by push

    @contextmanager
    def expect(self, job_id: str) -> Iterator[None]:
        """Listen for `job_id`'s result for the duration of the block (enter it before sending the task)."""
        if not self._push:
            yield
            return
        channel, slot = self.app.backend.get_key_for_task(job_id).decode(), _Slot()
        pubsub = self._listener()
        with self._lock:
            self._slots[channel] = slot
        pubsub.subscribe(channel)
        try:
            yield
        finally:
            with self._lock:
                self._slots.pop(channel, None)
            pubsub.unsubscribe(channel)

    def listening(self, job_id: str) -> bool:
        """True once Redis confirmed the subscription for `job_id`: a result published from now on is pushed."""
        slot = self._slots.get(self.app.backend.get_key_for_task(job_id).decode()) if self._push else None
        return slot is not None and slot.subscribed.is_set()

    def wait(self, job_id: str, timeout_s: float) -> dict | None:
        """The finished task's meta (`status`, `result`), or None after `timeout_s`; call inside `expect`."""
        if not self._push:
            return self._poll(job_id, timeout_s)
        slot = self._slots[self.app.backend.get_key_for_task(job_id).decode()]
        deadline = time.monotonic() + timeout_s
        slot.subscribed.wait(min(timeout_s, 1.0))  # from here on, a PUBLISH reaches the listener
        while True:
            meta = slot.meta or self._ready(job_id)
            remaining = deadline - time.monotonic()
            if meta is not None or remaining <= 0:
                return meta
            slot.done.wait(min(remaining, SAFETY_POLL_S))

    def updates(self, job_id: str, deadline: float) -> Iterator[dict]:
        """Each new state of the task (its meta) until `deadline` (monotonic); call inside `expect`.

        Pushed with Redis: the first meta is read (it holds whatever happened before the subscription; a
        streaming task's meta carries every piece so far), then each PUBLISH wakes the caller, with a read
        every `SAFETY_POLL_S` in case one was lost. Polled every 4 ms with other backends.
        """
        if not self._push:
            while time.monotonic() < deadline:
                yield self._read(job_id)
                time.sleep(0.004)
            return
        slot = self._slots[self.app.backend.get_key_for_task(job_id).decode()]
        slot.subscribed.wait(min(max(deadline - time.monotonic(), 0.0), 1.0))
        yield self._read(job_id)
        while (remaining := deadline - time.monotonic()) > 0:
            pushed = slot.changed.wait(min(remaining, SAFETY_POLL_S))
            slot.changed.clear()  # before reading `latest`: a PUBLISH after this sets it again
            if pushed and slot.latest is not None:
                self.pushed_updates += 1
                yield slot.latest
            else:
                yield self._read(job_id)

    def _read(self, job_id: str) -> dict:
        return self.app.backend.get_task_meta(job_id, cache=False)

    def _ready(self, job_id: str) -> dict | None:
        meta = self._read(job_id)
        return meta if meta["status"] in states.READY_STATES else None

    def _poll(self, job_id: str, timeout_s: float) -> dict | None:
        start, delay = time.monotonic(), 0.001
        while (elapsed := time.monotonic() - start) < timeout_s:
            if (meta := self._ready(job_id)) is not None:
                return meta
            time.sleep(delay)
            # One small read per poll while a typical answer is due, then back off.
            delay = min(delay * 1.5, 0.004 if elapsed < 2 else 0.05)
        return None

    def _listener(self):
        with self._lock:
            if self._pubsub is None:
                self._pubsub = self.app.backend.client.pubsub()
                self._pubsub.subscribe(KEEPALIVE_CHANNEL)
                threading.Thread(target=self._listen, args=(self._pubsub,), name="result-waiter", daemon=True).start()
            return self._pubsub

    def _listen(self, pubsub) -> None:
        while self._pubsub is pubsub:
            try:
                message = pubsub.get_message(timeout=1.0)
            except Exception:  # a dropped connection: redis-py resubscribes; waiters' GETs cover the gap
                if self._pubsub is not pubsub:
                    return  # closed by close()
                log.warning("result listener lost its Redis connection; retrying", exc_info=True)
                time.sleep(0.5)
                continue
            if message:
                self._deliver(message)

    def _deliver(self, message: dict) -> None:
        channel = message["channel"].decode() if isinstance(message["channel"], bytes) else message["channel"]
        slot = self._slots.get(channel)
        if slot is None:
            return
        if message["type"] == "subscribe":
            slot.subscribed.set()
        elif message["type"] == "message":
            meta = self.app.backend.decode_result(message["data"])
            slot.latest = meta
            slot.changed.set()
            if meta["status"] in states.READY_STATES:
                slot.meta = meta
                self.delivered += 1
                slot.done.set()

    def close(self) -> None:
        """Stop the listener thread and close its connection."""
        with self._lock:
            pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            pubsub.close()
