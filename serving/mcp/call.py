"""One tool call: the caller's tenant, capacity, a span, metrics, a worker thread, and readable errors.

Every tool body is a plain synchronous function of (state, tenant), usually one the REST API calls
too; this module is the only place that knows it runs inside an MCP server.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import anyio.to_thread
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import ValidationError

from serving.api.errors import ApiError
from serving.api.state import ApiState
from serving.mcp.auth import CallerAuth
from sluice import logs, metrics, tracing
from sluice.errors import SluiceError

Work = Callable[[ApiState, str], Any]
CARRIED = "sluice.mcp.carried"  # scope key: the HTTP request's trace context and log fields (server._InRequest)


async def run_tool(ctx: Context, tool: str, work: Work, *, waits: bool = False) -> Any:
    """Run `work(state, tenant)` for the caller of this tool call; our errors become tool errors."""
    return await run_call(ctx.mcp_server, ctx.request_context.request, tool, work, waits=waits)


async def run_call(server: Any, request: Any, tool: str, work: Work, *, waits: bool = False) -> Any:
    """Run `work` for the caller of `request` (None over stdio) on `server` (a `SluiceMCP`)."""
    state: ApiState = server.state
    auth: CallerAuth = server.auth
    t0, outcome = time.perf_counter(), "error"
    parent, fields = request.scope.get(CARRIED, (None, {})) if request is not None else (None, {})
    span = tracing.tracer().start_as_current_span(f"mcp {tool}", context=parent, attributes={"mcp.tool": tool})
    with logs.scope(**fields), span:
        try:
            async with auth.tenant(state, request) as tenant:
                logs.bind(tenant=tenant)
                with _query_slot(state, waits):
                    out = await anyio.to_thread.run_sync(work, state, tenant)
            outcome = "ok"
            return out
        except ToolError:
            raise
        except ApiError as exc:
            outcome = "refused" if exc.status in (429, 503) else "error"
            raise ToolError(refusal(exc)) from None
        except ValidationError as exc:
            raise ToolError(invalid(exc)) from None
        except SluiceError as exc:
            raise ToolError(str(exc)) from None
        finally:
            metrics.MCP_CALLS.labels(tool, outcome).inc()
            metrics.MCP_LATENCY.labels(tool).observe(time.perf_counter() - t0)


@contextmanager
def _query_slot(state: ApiState, waits: bool):
    """Calls that hold a thread while a worker answers take a query slot, as POST /v1/query does."""
    if not waits:
        yield
        return
    if not state.waiting.take():
        metrics.REJECTED.labels("backpressure").inc()
        detail = f"{state.settings.queue_limit} queries are already waiting in this process (SLUICE_QUEUE_LIMIT)"
        raise ApiError(503, detail, {"Retry-After": "1"})
    try:
        yield
    finally:
        state.waiting.give_back()


def invalid(exc: ValidationError) -> str:
    """Argument errors by field, without echoing the values (they are the caller's data)."""
    parts = [f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors()[:5]]
    return "invalid arguments: " + "; ".join(parts)


def refusal(exc: ApiError) -> str:
    """An API refusal as a tool error an agent can act on (when to retry, if it may)."""
    after = (exc.headers or {}).get("Retry-After")
    return f"{exc.detail} (HTTP {exc.status}; retry after {after} s)" if after else f"{exc.detail} (HTTP {exc.status})"
