"""Plain-ASGI middleware: per-request observation (ids, span, metrics, access log)."""

from __future__ import annotations

import logging
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sluice import logs, metrics, tracing

log = logging.getLogger("sluice.api")

QUIET_ROUTES = {"/healthz", "/metrics"}  # scraped every few seconds: not worth a log line each
_REQUEST_ID_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


def _request_id(given: str | None) -> str:
    """The caller's X-Request-Id if it is short and plain (it goes into logs and headers), else a new one."""
    if given and len(given) <= 128 and set(given) <= _REQUEST_ID_OK:
        return given
    return uuid.uuid4().hex


class Observe:
    """Request id, trace span, metrics, access log and id headers for every HTTP request.

    Plain ASGI rather than `@app.middleware("http")`: Starlette's BaseHTTPMiddleware runs the app
    in a second task and pipes the body through memory streams, a cost paid on every request.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0, method, status = time.perf_counter(), scope["method"], 500
        request_id = _request_id(Headers(scope=scope).get("x-request-id"))
        with tracing.continued(Headers(scope=scope), f"{method} {scope['path']}") as span:
            token = logs.start(request_id=request_id, trace_id=tracing.trace_id())

            async def send_with_ids(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    headers = MutableHeaders(scope=message)
                    headers["X-Request-Id"] = request_id
                    if trace_id := tracing.trace_id():
                        headers["X-Trace-Id"] = trace_id
                        tracing.inject(headers)  # `traceparent`, for callers that continue the trace
                await send(message)

            try:
                await self.app(scope, receive, send_with_ids)
            finally:
                _observed(scope, span, method, status, time.perf_counter() - t0)
                logs.end(token)


def _observed(scope: Scope, span, method: str, status: int, elapsed: float) -> None:
    path = getattr(scope.get("route"), "path", "unmatched")
    metrics.REQUESTS.labels(path, method, str(status)).inc()
    metrics.LATENCY.labels(path).observe(elapsed)
    span.update_name(f"{method} {path}")
    span.set_attributes({"http.route": path, "http.response.status_code": status})
    if path not in QUIET_ROUTES:
        log.info("request", extra={"route": path, "method": method, "status": status, "ms": elapsed * 1e3})
