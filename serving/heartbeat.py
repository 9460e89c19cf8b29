"""Worker liveness for /readyz that works with every broker.

Celery's ping needs a broadcast exchange, which the embedded Postgres broker (kombu's SQLAlchemy
transport) lacks. Instead each worker node upserts a row in `worker_heartbeats` (application
database, not tenant data) every `worker_heartbeat_s` seconds from its consumer's timer, so a
hung consumer stops beating too; a clean shutdown deletes the row, a killed worker's row goes stale
after `STALE_BEATS` intervals. The row names its broker by a hash, so an API counts only workers
that consume from the broker it sends to.

The same step, on the same connection and timer, expires finished jobs (`serving.jobs.expire`) and
orphaned uploads (`serving.upload_store.expire`): every worker node sweeps, so expiry needs no
scheduler of its own.
"""

from __future__ import annotations

import hashlib
import logging
import os

import psycopg
from celery import bootsteps

from serving.jobs import expire, sweep_interval
from serving.upload_store import expire as expire_uploads
from serving.upload_store import upload_store
from sluice.db import Database, app_conninfo
from sluice.settings import Settings

log = logging.getLogger(__name__)

STALE_BEATS = 3

UPSERT = """
INSERT INTO worker_heartbeats AS h (worker_id, hostname, pid, processes, queues, broker, beat_at)
VALUES (%(worker_id)s, %(hostname)s, %(pid)s, %(processes)s, %(queues)s, %(broker)s, now())
ON CONFLICT (worker_id) DO UPDATE SET
    processes = excluded.processes, queues = excluded.queues, broker = excluded.broker, beat_at = now()
"""


def broker_id(url: str) -> str:
    """A stable name of a broker URL that does not store its password."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def live_workers(db: Database, broker_url: str, interval_s: float) -> tuple[int, int]:
    """Worker nodes with a fresh heartbeat on this broker, and their pool processes."""
    with db.statement() as conn:
        nodes, processes = conn.execute(
            "SELECT count(*), coalesce(sum(processes), 0) FROM worker_heartbeats"
            " WHERE broker = %s AND beat_at > now() - make_interval(secs => %s)",
            (broker_id(broker_url), interval_s * STALE_BEATS),
        ).fetchone()
    return int(nodes), int(processes)


class Heartbeat(bootsteps.StartStopStep):
    """A consumer bootstep that beats for this worker node and sweeps expired jobs, on the consumer's timer."""

    requires = ("celery.worker.consumer.tasks:Tasks",)  # beat only once tasks are being consumed
    settings: Settings  # set by `heartbeat_step`: Celery builds the step itself, from the class

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        self.conn: psycopg.Connection | None = None
        self.trefs: list = []
        self.worker_id = ""  # set by start(); stop() also runs after a start-up that failed earlier

    def start(self, c) -> None:
        self.worker_id = f"{c.hostname}:{os.getpid()}"
        self.beat(c)
        self.trefs = [
            c.timer.call_repeatedly(self.settings.worker_heartbeat_s, self.beat, (c,), priority=10),
            c.timer.call_repeatedly(sweep_interval(self.settings.job_retention_s), self.sweep, (), priority=10),
        ]

    def beat(self, c) -> None:
        queues = sorted(q.name for q in c.task_consumer.queues) if c.task_consumer else []
        row = {
            "worker_id": self.worker_id,
            "hostname": c.hostname,
            "pid": os.getpid(),
            "processes": c.pool.num_processes if c.pool else 0,
            "queues": queues,
            "broker": broker_id(c.app.conf.broker_url),
        }
        self._execute(UPSERT, row)

    def sweep(self) -> None:
        self._run(lambda conn: expire(conn, self.settings.job_retention_s))
        self._run(lambda conn: expire_uploads(conn, upload_store(self.settings), self.settings.upload_retention_h))

    def stop(self, c) -> None:
        for tref in self.trefs:
            tref.cancel()
        self.trefs = []
        self._execute("DELETE FROM worker_heartbeats WHERE worker_id = %(worker_id)s", {"worker_id": self.worker_id})
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    shutdown = stop

    def _execute(self, query: str, params: dict) -> None:
        self._run(lambda conn: conn.execute(query, params))

    def _run(self, work) -> None:
        # A missed beat or sweep is not fatal (readiness turns red after a few beats; the next sweep
        # catches up): log and reconnect next time.
        try:
            if self.conn is None or self.conn.closed:
                self.conn = psycopg.connect(app_conninfo(self.settings), autocommit=True, connect_timeout=2)
            work(self.conn)
        except psycopg.Error as exc:
            log.warning("worker heartbeat or job sweep not done: %s", exc)
            if self.conn is not None:
                self.conn.close()
            self.conn = None


def heartbeat_step(settings: Settings) -> type[Heartbeat]:
    """The heartbeat step bound to `settings` (register it on `app.steps['consumer']`)."""
    return type("Heartbeat", (Heartbeat,), {"settings": settings, "__module__": __name__})
