"""The app factory: state, lifespan, error handlers, middleware and the routers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import Protocol

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from starlette.routing import BaseRoute

from serving.api import feedback, health, jobs, query
from serving.api.admit import Admit
from serving.api.body import LimitBody, max_body_bytes
from serving.api.errors import install_handlers
from serving.api.middleware import Observe
from serving.api.state import ApiState
from serving.console import install as install_console
from sluice import metrics, tracing
from sluice.settings import Settings

log = logging.getLogger("sluice.api")


class Beside(Protocol):
    """Something served beside the API (the MCP endpoint): its routes and what must run while the app runs."""

    routes: list[BaseRoute]

    def lifespan(self) -> AbstractAsyncContextManager: ...


def create_app(settings: Settings, *, rest: bool = True, beside: Callable[[ApiState], Beside] | None = None) -> FastAPI:
    """Build the API for these settings (nothing connects until the first request).

    `beside` adds routes that share the API's state and admission (serving/mcp: `mount`); `rest=False`
    leaves out the REST routes but health checks (`sluice mcp --http`).
    """
    tracing.setup_tracing(settings, "sluice-api")
    metrics.configure(settings)
    state = ApiState(settings)
    extra = beside(state) if beside is not None else None
    app = FastAPI(
        title="Sluice",
        version="0.1.0",
        lifespan=_lifespan(state, extra),
        docs_url=None,  # /docs and /redoc come from serving/console/docs.py, with local assets
        redoc_url=None,
        description="Answers from each tenant's documents, with citations.",
        # FastAPI's own OpenTelemetry spans switch on whenever a tracer provider is installed (ours always
        # is): a second server span per request, outside the caller's trace (`Observe` continues that),
        # plus a span per dependency, at ~1 ms of CPU a request. `Observe` makes the one server span.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.sluice = state
    install_handlers(app)
    app.add_middleware(LimitBody, limit=max_body_bytes(settings))
    app.add_middleware(Admit, state=state)  # outside LimitBody: no key, no body read (and no 413 either)
    app.add_middleware(Observe)  # added last = outermost: refusals are observed too
    for module in (query, jobs, feedback, health) if rest else (health,):
        app.include_router(module.router)
    if extra is not None:
        app.router.routes.extend(extra.routes)
    if rest:  # `sluice mcp --http` serves MCP alone
        install_console(app, settings)
    return app


def _lifespan(state: ApiState, extra: Beside | None):
    @asynccontextmanager
    async def lifespan(_: FastAPI):
        import anyio.to_thread

        # Sync handlers run on anyio's thread pool (40 by default). Up to queue_limit of them sleep while a
        # worker answers; 40 more keep refusals, auth and health checks fast while they do.
        anyio.to_thread.current_default_thread_limiter().total_tokens = state.settings.queue_limit + 40
        await state.auth.open(wait=False)
        try:
            await run_in_threadpool(state.warm_up)  # the first request should not pay for connections
        except Exception as exc:  # not fatal: /readyz reports what is down, requests retry the connection
            log.warning("API warm-up incomplete: %s", exc)
        async with extra.lifespan() if extra is not None else nullcontext():
            yield
        await state.auth.close()
        state.close()

    return lifespan
