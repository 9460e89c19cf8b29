"""Request dependencies: the tenant from the bearer key (and its rate limit), load shedding, Idempotency-Key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from serving.api.errors import ApiError
from serving.api.state import ApiState, State
from serving.auth import AuthError, bearer_token, hash_key
from serving.ratelimit import authorize, retry_after
from sluice import logs, metrics

BEARER = HTTPBearer(auto_error=False, description="A tenant API key from `sluice key create`.")
IdemKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255, min_length=1)]


async def tenant_of(state: State, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> str:
    """Resolve the bearer key to its tenant and spend one token of its rate limit (one database round trip)."""
    try:
        token_hash = hash_key(bearer_token(f"{creds.scheme} {creds.credentials}" if creds else None))
    except AuthError as exc:
        raise ApiError(401, str(exc), {"WWW-Authenticate": "Bearer"}) from exc
    s = state.settings
    auth = await authorize(state.auth, token_hash, s.rate_limit_per_s, s.rate_limit_burst)
    if auth.tenant is None:
        raise ApiError(
            401,
            "unknown or revoked API key: create one with `sluice key create --tenant T`",
            {"WWW-Authenticate": "Bearer"},
        )
    tenant, wait = auth.tenant, auth.wait_s
    logs.bind(tenant=tenant)
    if wait:
        metrics.REJECTED.labels("rate_limit").inc()
        raise ApiError(
            429,
            f"rate limit of {s.rate_limit_per_s:g} requests/s exceeded for this key",
            {"Retry-After": retry_after(wait)},
        )
    return tenant


Tenant = Annotated[str, Depends(tenant_of)]


def _busy(state: ApiState) -> ApiError:
    metrics.REJECTED.labels("backpressure").inc()
    return ApiError(
        503,
        f"{state.settings.queue_limit} queries are already waiting in this API process (SLUICE_QUEUE_LIMIT); "
        "retry later",
        {"Retry-After": "1"},
    )


async def shed_load(request: Request) -> AsyncIterator[None]:
    """Hold one of this process's SLUICE_QUEUE_LIMIT query slots for the whole request, or refuse (503) at once.

    Async and first among the dependencies: a refusal costs no thread and no database work. Taken any
    later (after the key lookup and the rate-limit update, one row per tenant), a flood's refused
    requests held the threads and connections the admitted queries needed, and those waited behind it.
    """
    state: ApiState = request.app.state.sluice
    if not state.waiting.take():
        raise _busy(state)
    try:
        yield
    finally:
        state.waiting.give_back()


Shed = Annotated[None, Depends(shed_load)]
