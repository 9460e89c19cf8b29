"""Dead letters: a task the workers give up on is recorded, acknowledged and never delivered again.

Three ways in: the main process refuses a message no pool process can take (`serving.poison`); a task
kills its worker process on every attempt (`retry_on_worker_lost` runs out of SLUICE_TASK_MAX_RETRIES);
a task raises on its last attempt. Each becomes one row of `dead_letters` under its tenant's policy
(the payload is the tenant's data: its question and filters), its job is marked finished, and
`sluice_dead_letters_total` counts it. Celery stores the FAILURE result, so the caller is told.

A payload that names no tenant did not come from the API (which takes the tenant from the key): it
cannot be stored under any tenant's policy, so it is counted and logged without its content.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

import psycopg
from billiard.exceptions import TimeLimitExceeded, WorkerLostError
from celery.signals import task_failure
from psycopg.types.json import Jsonb

from serving.jobs import FINISH, tenant_of
from sluice import metrics
from sluice.db import app_conninfo
from sluice.jsonwalk import deeper_than, storable_problem
from sluice.settings import Settings

log = logging.getLogger(__name__)

MAX_ARGUMENTS = 8192  # characters of JSON kept per dead letter; a larger payload is summarised
MAX_ARGUMENT_DEPTH = 32
MAX_ERROR = 2000
_SECRET = re.compile(r"(?i)secret|password|passwd|token|api[_-]?key|authorization|credential")

UPSERT = """
INSERT INTO dead_letters AS d (tenant_id, task_id, task_name, reason, arguments, last_error, attempts, first_at)
VALUES (%(tenant)s, %(task_id)s, %(task)s, %(reason)s, %(arguments)s, %(error)s, %(attempts)s,
        coalesce(to_timestamp(%(first_at)s), now()))
ON CONFLICT (tenant_id, task_id) DO UPDATE SET
    reason = excluded.reason, arguments = excluded.arguments, last_error = excluded.last_error,
    attempts = d.attempts + excluded.attempts, last_at = now()
"""


@dataclass(frozen=True)
class DeadLetter:
    """One task given up on: what it was, why, and after how many attempts."""

    task_id: str
    task: str
    reason: str
    error: str
    attempts: int
    payload: Any  # the task's argument as received (the API sends one mapping)
    first_at: float | None = None  # when the API enqueued it (message header), if known


def bounded_arguments(payload: Any) -> dict:
    """The payload as stored: secret-looking keys dropped; a summary when too deep, too large or not jsonb."""
    if not isinstance(payload, dict):
        return {"omitted": f"the argument is a {type(payload).__name__}, not a mapping"}
    if deeper_than(payload, MAX_ARGUMENT_DEPTH):
        return {"omitted": f"arguments nest deeper than {MAX_ARGUMENT_DEPTH} levels", "keys": _keys(payload)}
    if problem := storable_problem(payload):
        return {"omitted": problem, "keys": _keys(payload)}
    kept = {k: v for k, v in payload.items() if not (isinstance(k, str) and _SECRET.search(k))}
    text = json.dumps(kept, ensure_ascii=False, default=repr)
    if len(text) > MAX_ARGUMENTS:
        return {"omitted": f"{len(text)} characters of arguments, over {MAX_ARGUMENTS}", "keys": _keys(payload)}
    return json.loads(text)


def _keys(payload: dict) -> list[str]:
    return sorted(str(k)[:64] for k in list(payload)[:20])


def record(settings: Settings, letter: DeadLetter) -> bool:
    """Count the dead letter, store it under its tenant and mark its job finished; False if it could not be stored."""
    metrics.DEAD_LETTERS.labels(letter.task, letter.reason).inc()
    tenant = tenant_of(letter.payload)
    where = {"task": letter.task, "task_id": letter.task_id, "reason": letter.reason, "attempts": letter.attempts}
    if tenant is None:
        log.error("dead letter names no tenant: counted, not stored", extra={**where, "error": letter.error[:300]})
        return False
    row = {
        **where,
        "tenant": tenant,
        "arguments": Jsonb(bounded_arguments(letter.payload)),
        "error": letter.error[:MAX_ERROR],
        "first_at": letter.first_at,
    }
    try:
        with psycopg.connect(app_conninfo(settings), connect_timeout=5) as conn, conn.transaction():
            conn.execute("SELECT set_config('app.tenant_id', %s, true)", (tenant,))
            conn.execute(UPSERT, row)
            conn.execute(FINISH, (letter.task_id,))
    except psycopg.Error as exc:
        log.error("dead letter not stored: %s", exc, extra=where)
        return False
    log.error("task moved to dead letters: it will not be delivered again", extra=where)
    return True


def _reason(task, exc: BaseException) -> str:
    if isinstance(exc, WorkerLostError):
        return "worker_lost"
    if isinstance(exc, TimeLimitExceeded):
        return "time_limit"
    retries, limit = task.request.retries or 0, task.max_retries
    return "retries_exhausted" if limit is not None and retries >= limit and retries > 0 else "failed"


def record_failures(settings: Settings) -> None:
    """Record every task that ends in FAILURE (in the pool process, or in the main one for a lost worker)."""

    def on_failure(sender=None, task_id=None, exception=None, args=None, **_: Any) -> None:
        request = sender.request
        letter = DeadLetter(
            task_id=task_id or "",
            task=sender.name,
            reason=_reason(sender, exception),
            error=f"{type(exception).__name__}: {exception}",
            attempts=(request.retries or 0) + 1,
            payload=args[0] if args else None,
            first_at=seconds(getattr(request, metrics.ENQUEUED_AT, None)),
        )
        record(settings, letter)

    task_failure.connect(on_failure, weak=False, dispatch_uid="sluice-dead-letters")


def seconds(value: Any) -> float | None:
    """An epoch timestamp from a message header, or None unless it is a number PostgreSQL can take."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if 0 <= number < 2**33 else None  # to_timestamp() refuses NaN and far futures
