"""A tenant's dead letters for an operator: listed (`sluice jobs dead`) and replayed (`sluice jobs retry ID`).

A replay sends the stored task with its stored arguments to its own queue under a new job id, a uuid5
of the dead letter's task id and its replay count, recorded on the row (`retries`, `retried_as`). Run
twice, it sends nothing the second time and answers the same job id, unless that job died too (it
then has a dead letter of its own) and the next count gives the next id. The message is sent inside
the transaction that records the replay: if the broker refuses it nothing is recorded; if the commit
fails after the send, the next replay sends the same job id again (at least once, never two ids).

Arguments that were summarised when the task died (too large, too deep, not storable) cannot be
replayed: the request has to be sent again through the API.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from serving.celery_app import QUERY_TASK, ROUTES
from sluice import metrics
from sluice.db import Database
from sluice.errors import SluiceError

REPLAY_NAMESPACE = uuid.UUID("5d1ce0de-0000-4000-8000-00000000dead")
ERROR_SHOWN = 120  # characters of the last error in a listing

LIST = """
SELECT task_id, task_name, reason, attempts, first_at, last_at, last_error, retries, retried_as
FROM dead_letters ORDER BY last_at DESC, task_id LIMIT %s
"""
LOCK = "SELECT task_name, arguments, retries, retried_as FROM dead_letters WHERE task_id = %s FOR UPDATE"
DIED = "SELECT 1 FROM dead_letters WHERE task_id = %s"
NEW_JOB = """
INSERT INTO jobs (job_id, tenant_id, kind, request)
SELECT %(job)s, %(tenant)s, %(kind)s,
       coalesce((SELECT request FROM jobs WHERE job_id = %(of)s), '{}'::jsonb) || %(retry_of)s
ON CONFLICT (job_id) DO NOTHING
"""
MARK = "UPDATE dead_letters SET retries = %s, retried_as = %s, retried_at = now() WHERE task_id = %s"


class DeadLetterError(SluiceError):
    """A dead letter that does not exist for the tenant, or cannot be replayed."""


@dataclass(frozen=True)
class DeadLetterRow:
    """One dead letter as an operator sees it."""

    task_id: str
    task: str
    reason: str
    attempts: int
    first_at: datetime
    last_at: datetime
    error: str
    retries: int
    retried_as: str | None

    def short_error(self) -> str:
        """The last error on one line, cut to ERROR_SHOWN characters."""
        text = " ".join(self.error.split())
        return text if len(text) <= ERROR_SHOWN else text[: ERROR_SHOWN - 1] + "…"

    def to_json(self) -> dict:
        """The row as JSON (times in ISO 8601, the error shortened)."""
        out = {**self.__dict__, "first_at": self.first_at.isoformat(), "last_at": self.last_at.isoformat()}
        return {**out, "error": self.short_error()}


@dataclass(frozen=True)
class Replay:
    """The job a replay sent, or (sent=False) the one an earlier replay sent and that has not died."""

    job_id: str
    sent: bool


def dead_letters(db: Database, tenant: str, limit: int = 50) -> list[DeadLetterRow]:
    """The tenant's dead letters, newest first, read under its policy (UnknownTenantError if there is no tenant)."""
    with db.tenant(tenant) as conn:
        rows = conn.execute(LIST, (max(limit, 1),)).fetchall()
    return [DeadLetterRow(*row) for row in rows]


def replay_job_id(task_id: str, count: int) -> str:
    """The job id of the `count`-th replay of a dead letter (the same for every run of that replay)."""
    return str(uuid.uuid5(REPLAY_NAMESPACE, f"{task_id}#{count}"))


def replay(db: Database, celery: Any, tenant: str, task_id: str) -> Replay:
    """Send the dead letter's task again under a new job id, or answer the job an earlier replay sent."""
    with db.tenant(tenant) as conn:
        row = conn.execute(LOCK, (task_id,)).fetchone()
        if row is None:
            hint = f"`sluice jobs dead --tenant {tenant}` lists them"
            raise DeadLetterError(f"no dead letter {task_id} for tenant {tenant}: {hint}")
        name, arguments, retries, retried_as = row
        queue = _replayable(task_id, tenant, name, arguments)
        if retried_as is not None and conn.execute(DIED, (retried_as,)).fetchone() is None:
            return Replay(retried_as, sent=False)
        job_id = replay_job_id(task_id, retries + 1)
        kind = "query" if name == QUERY_TASK else "ingest"
        job = {"job": job_id, "tenant": tenant, "kind": kind, "of": task_id, "retry_of": Jsonb({"retry_of": task_id})}
        conn.execute(NEW_JOB, job)
        conn.execute(MARK, (retries + 1, job_id, task_id))
        _send(celery, name, queue, job_id, arguments)
    return Replay(job_id, sent=True)


def _replayable(task_id: str, tenant: str, name: str, arguments: Any) -> str:
    """The queue to send the task to; DeadLetterError when its arguments were not kept whole."""
    if not isinstance(arguments, dict) or "omitted" in arguments:
        why = arguments.get("omitted") if isinstance(arguments, dict) else "no arguments were stored"
        raise DeadLetterError(
            f"dead letter {task_id} cannot be replayed: its arguments were not stored ({why}); "
            "send the request again through the API (POST /v1/jobs), within its limits"
        )
    if name not in ROUTES or arguments.get("tenant") != tenant:
        raise DeadLetterError(
            f"dead letter {task_id} cannot be replayed: task {name!r} is not one the API sends "
            f"({', '.join(sorted(ROUTES))}) for tenant {tenant}; send the request again through the API"
        )
    return ROUTES[name]["queue"]


def _send(celery: Any, name: str, queue: str, job_id: str, arguments: dict) -> None:
    try:
        celery.send_task(
            name, args=[arguments], task_id=job_id, queue=queue, headers={metrics.ENQUEUED_AT: time.time()}
        )
    except Exception as exc:  # kombu's connection errors share no base below Exception
        raise DeadLetterError(  # the type only: a broker error may quote its URL
            f"the dead letter was not replayed: the broker refused the message ({type(exc).__name__}); "
            "check SLUICE_BROKER_URL and that the broker runs, then retry"
        ) from exc
