"""Admission of /v1 and /mcp requests before their body is read: the key, then capacity, then the rate limit.

Plain ASGI around the app, because FastAPI reads (and buffers) a request's whole body before any
dependency runs: here a request without a valid key is answered 401 having sent only its headers.
The checks that cost nothing come first, so a refusal costs no thread and, once a key is cached, no
database work:
1. the bearer key's tenant (serving/api/keys.py: cached; unknown or revoked -> 401);
2. the tenant's requests in flight in this process (SLUICE_TENANT_CONCURRENCY -> 429);
3. for POST /v1/query, one of this process's SLUICE_QUEUE_LIMIT query slots (-> 503);
4. one token of the tenant's rate limit, which re-checks the key in the same statement (-> 401 or 429).
Unauthenticated requests never reach 2 and 3: a flood with bogus keys cannot take capacity from
tenants. The slots are held until the response is sent. `deps.tenant_of` reads the tenant from the scope.
"""

from __future__ import annotations

from contextlib import ExitStack

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.api.errors import ApiError, problem
from serving.api.state import ApiState
from serving.auth import AuthError, bearer_token, hash_key
from serving.ratelimit import authorize, retry_after
from sluice import logs, metrics

TENANT = "sluice.tenant"  # the scope key under which an admitted request carries its tenant
MCP_PATH = "/mcp"  # its tools that wait on a worker take a query slot themselves (serving/mcp/call.py)
QUERY_SLOT = ("POST", "/v1/query")  # the one route that holds a query slot while a worker answers


class Admit:
    """Authenticate and admit every /v1 request before the app (and its body parsing) sees it."""

    def __init__(self, app: ASGIApp, state: ApiState):
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not admitted(scope["path"]):
            await self.app(scope, receive, send)
            return
        with ExitStack() as held:
            try:
                scope[TENANT] = await admit(self.state, scope, held)
            except ApiError as exc:
                # The unread body is discarded by the server, within SLUICE_BODY_TIMEOUT_S.
                await problem(exc)(scope, receive, send)
                return
            await self.app(scope, receive, send)


def admitted(path: str) -> bool:
    """Paths that need a key: the REST API under /v1/, and the MCP endpoint (serving/mcp) at /mcp."""
    return path.startswith("/v1/") or path == MCP_PATH or path.startswith(MCP_PATH + "/")


async def admit(state: ApiState, scope: Scope, held: ExitStack) -> str:
    """The request's tenant once every check passed; the slots it took are given back when `held` closes."""
    token_hash = _key_hash(scope)
    tenant = await state.keys.tenant(token_hash)
    if tenant is None:
        raise _unknown_key()
    logs.bind(tenant=tenant)
    if not state.tenant_slots.take(tenant):
        raise tenant_busy(state)
    held.callback(state.tenant_slots.give_back, tenant)
    if (scope["method"], scope["path"]) == QUERY_SLOT:
        if not state.waiting.take():
            raise busy(state)
        held.callback(state.waiting.give_back)
    await spend(state, token_hash)
    return tenant


def _key_hash(scope: Scope) -> str:
    try:
        return hash_key(bearer_token(Headers(scope=scope).get("authorization")))
    except AuthError as exc:
        metrics.REJECTED.labels("unauthenticated").inc()
        raise ApiError(401, str(exc), {"WWW-Authenticate": "Bearer"}) from exc


async def spend(state: ApiState, token_hash: str) -> None:
    """Spend one token of the key's tenant (one statement, which also finds a key revoked since it was cached)."""
    s = state.settings
    auth = await authorize(state.auth, token_hash, s.rate_limit_per_s, s.rate_limit_burst)
    if auth.tenant is None:
        state.keys.forget(token_hash)
        raise _unknown_key()
    if auth.wait_s:
        detail = f"rate limit of {s.rate_limit_per_s:g} requests/s exceeded for this key"
        raise _refused("rate_limit", 429, detail, retry_after(auth.wait_s))


def _unknown_key() -> ApiError:
    metrics.REJECTED.labels("unauthenticated").inc()
    detail = "unknown or revoked API key: create one with `sluice key create --tenant T`"
    return ApiError(401, detail, {"WWW-Authenticate": "Bearer"})


def tenant_busy(state: ApiState) -> ApiError:
    detail = (
        f"this tenant already has {state.settings.tenant_concurrency} requests in flight in this API process "
        "(SLUICE_TENANT_CONCURRENCY); retry when one has finished"
    )
    return _refused("tenant_concurrency", 429, detail)


def busy(state: ApiState) -> ApiError:
    detail = (
        f"{state.settings.queue_limit} queries are already waiting in this API process (SLUICE_QUEUE_LIMIT); "
        "retry later"
    )
    return _refused("backpressure", 503, detail)


def _refused(reason: str, status: int, detail: str, after: str = "1") -> ApiError:
    """A refusal for capacity, counted by reason, with Retry-After."""
    metrics.REJECTED.labels(reason).inc()
    return ApiError(status, detail, {"Retry-After": after})
