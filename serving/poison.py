"""What a worker refuses before any work: messages no pool process can take, and payloads the API would refuse.

The main process of `sluice worker` hands each task's arguments to a pool process by pickling them.
A filter nested a few hundred levels deep passed the old API, and pickling it raised RecursionError
in the main process itself: the worker died, the unacknowledged message was restored, and it killed
every worker started after it. `guarded_strategy` measures each message (size, nesting, both without
recursion) before Celery's own handling; one that fails is a dead letter and is rejected without
requeue. Inside the pool process, `check_payload` re-validates a query with the API's own model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery.exceptions import InvalidTaskError
from celery.worker.strategy import default as default_strategy
from pydantic import ValidationError

from serving.deadletter import DeadLetter, seconds
from serving.schemas import QueryRequest
from serving.upload_store import is_upload_ids
from sluice import metrics
from sluice.errors import QueryError
from sluice.jsonwalk import deeper_than

log = logging.getLogger(__name__)

# Far above any message the API sends (a question of 4,000 characters, a filter of 64 KiB, 17 levels),
# far below what pickle can take: it recursed out at ~500 levels from the worker's main loop.
MAX_MESSAGE_BYTES = 1024 * 1024
MAX_MESSAGE_DEPTH = 64
QUERY_FIELDS = ("question", "filters", "collection", "stream")


def measure(message) -> tuple[str | None, Any]:
    """(why no pool process can be handed this message or None, its decoded body or None)."""
    size = len(message.body or b"")
    if size > MAX_MESSAGE_BYTES:
        return f"message body of {size} bytes exceeds {MAX_MESSAGE_BYTES}", None
    try:
        body = message.decode()  # memoised: Celery reuses this decoded body
    except Exception as exc:  # kombu raises DecodeError, or RecursionError for a body nested ~1,000 deep
        return f"message body cannot be decoded: {type(exc).__name__}", None
    if deeper_than(body, MAX_MESSAGE_DEPTH):
        return f"task arguments nest deeper than {MAX_MESSAGE_DEPTH} levels: no worker process can take them", body
    return None, body


def _letter(task, message, problem: str, body: Any) -> DeadLetter:
    # Protocol 2: the body is [args, kwargs, embed]; the API sends one argument, the payload mapping.
    args = body[0] if isinstance(body, (list, tuple)) and body and isinstance(body[0], (list, tuple)) else ()
    headers = message.headers or {}
    return DeadLetter(
        task_id=str(headers.get("id", "")),
        task=task.name,
        reason="poison",
        error=problem,
        attempts=1,
        payload=args[0] if args else None,
        first_at=seconds(headers.get(metrics.ENQUEUED_AT)),
    )


def guarded_strategy(record: Callable[[DeadLetter], Any]):
    """A Celery task `Strategy`: the default one behind `measure`; refusals go to `record`."""

    def strategy(task, app, consumer, **kwargs):
        handle = default_strategy(task, app, consumer, **kwargs)

        def on_message(message, body, ack, reject, callbacks, **kw):
            problem, decoded = measure(message)
            if problem is None:
                return handle(message, body, ack, reject, callbacks, **kw)
            letter = _letter(task, message, problem, decoded)
            _contain(record, task, letter)
            raise InvalidTaskError(problem)  # Celery logs it and rejects the message without requeue

        return on_message

    return strategy


def _contain(record: Callable[[DeadLetter], Any], task, letter: DeadLetter) -> None:
    """Record the dead letter and its FAILURE result (so the API waiting on the job is told at once)."""
    # Anything but InvalidTaskError escaping a strategy would stop the main process: the very thing
    # this guard exists to prevent. A database or result store that is down costs a log line.
    try:
        record(letter)
        if letter.task_id:
            task.backend.mark_as_failure(letter.task_id, InvalidTaskError(letter.error))
    except Exception as exc:
        log.error("dead letter %s not fully recorded: %s", letter.task_id, exc)


def check_payload(payload: Any, query: bool) -> None:
    """Refuse (QueryError) a payload the API would have refused: the same model, the same filter limits."""
    if not isinstance(payload, dict) or not isinstance(payload.get("tenant"), str):
        raise QueryError("the task's argument must be a mapping naming its tenant: send work through the API")
    if not query:
        named, uploads = isinstance(payload.get("source"), str), payload.get("uploads")
        if named == (uploads is not None) or (uploads is not None and not is_upload_ids(uploads)):
            raise QueryError(
                "an ingest task needs either its `source` (a name) or its `uploads` (upload ids): "
                "send work through the API"
            )
        return
    try:
        QueryRequest.model_validate({k: payload[k] for k in QUERY_FIELDS if payload.get(k) is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise QueryError(f"query refused: {first['msg']} (at {'.'.join(map(str, first['loc'])) or 'body'})") from None
