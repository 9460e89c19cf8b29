"""The app factory: state, lifespan, error handlers, middleware and the routers."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from serving.api import health, jobs, query
from serving.api.admit import Admit
from serving.api.body import LimitBody, max_body_bytes
from serving.api.errors import install_handlers
from serving.api.middleware import Observe
from serving.api.state import ApiState
from serving.console import install as install_console
from sluice import metrics, tracing
from sluice.settings import Settings

log = logging.getLogger("sluice.api")


def create_app(settings: Settings) -> FastAPI:
    """Build the API for these settings (nothing connects until the first request)."""
    tracing.setup_tracing(settings, "sluice-api")
    metrics.configure(settings)
    state = ApiState(settings)
    app = FastAPI(
        title="Sluice",
        version="0.1.0",
        lifespan=_lifespan(state),
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
    for module in (query, jobs, health):
        app.include_router(module.router)
    install_console(app, settings)
    return app


def _lifespan(state: ApiState):
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
        yield
        await state.auth.close()
        state.close()

    return lifespan
