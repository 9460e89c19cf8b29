"""Structured logs: one JSON formatter, request context carried in contextvars.

`configure_logging(settings)` is called at each long-running entry point (`sluice serve`, `sluice worker`).
Every line carries the request id, tenant, config id and trace id of the request being served, when
there is one: the API binds them per request, the worker per task (from the Celery message headers).
No line carries what a task was asked or answered (`HidePayloads`): questions, filters and answers
quoting documents stay out of logs at every level.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token

from sluice.settings import Settings

FIELDS = ("request_id", "tenant", "config_id", "trace_id")
# One mutable dict per request or task: a value bound in a worker thread of the same request (FastAPI
# runs sync dependencies and endpoints on copies of the context) is still seen by the request's other lines.
_CONTEXT: ContextVar[dict[str, str] | None] = ContextVar("sluice_log_context", default=None)
# Attributes every LogRecord has; anything else passed through `extra=` is written as a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
# Celery's task lines ("Task … received", "… succeeded in 0.2s: <result>", failures, retries) put the
# task's arguments and return value in their format arguments and again in an extra `data` field.
PAYLOAD_KEYS = frozenset({"args", "kwargs", "return_value"})
HIDDEN = "<hidden>"


def context() -> dict[str, str]:
    """The bound request context (only the fields that are set); trace_id from OpenTelemetry if unset."""
    out = dict(_CONTEXT.get() or {})
    if "trace_id" not in out and (trace_id := _otel_trace_id()):
        out["trace_id"] = trace_id
    return out


def _otel_trace_id() -> str | None:
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def start(**values: str | None) -> Token:
    """Begin a new request/task context holding `values`; `end(token)` restores the previous one."""
    return _CONTEXT.set({k: v for k, v in values.items() if k in FIELDS and v is not None})


def end(token: Token) -> None:
    _CONTEXT.reset(token)


def bind(**values: str | None) -> None:
    """Add fields to the current request/task context (starting one if there is none)."""
    current = _CONTEXT.get()
    if current is None:
        current = {}
        _CONTEXT.set(current)
    current.update({k: v for k, v in values.items() if k in FIELDS and v is not None})


@contextmanager
def scope(**values: str | None) -> Iterator[None]:
    """A request/task context for the duration of a `with` block."""
    token = start(**values)
    try:
        yield
    finally:
        end(token)


class HidePayloads(logging.Filter):
    """Hide task arguments and return values in every record; name, id, timing and outcome stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, Mapping) and PAYLOAD_KEYS & record.args.keys():
            record.args = _hidden(record.args)
        data = getattr(record, "data", None)
        if isinstance(data, Mapping):
            record.data = _hidden(data)
        return True


def _hidden(values: Mapping) -> dict:
    return {k: HIDDEN if k in PAYLOAD_KEYS else v for k, v in values.items()}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request context, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
            **context(),
        }
        line.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def configure_logging(settings: Settings, level: str | int | None = None) -> None:
    """Route the root logger to stderr with the configured format (replaces existing root handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(HidePayloads())
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level or settings.log_level.upper())
