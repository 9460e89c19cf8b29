"""Idempotency-Key: the first request with a key does the work; repeats, also concurrent ones, replay it."""

from __future__ import annotations

from collections.abc import Callable

from serving import idempotency as idem
from serving.api.errors import ApiError
from serving.api.state import ApiState


def idempotent(
    state: ApiState, tenant: str, key: str | None, path: str, body: dict, work: Callable[[], tuple[int, dict]]
) -> tuple[int, dict, bool]:
    """Run `work` once per (tenant, key, body); later and concurrent requests replay its response."""
    if key is None:
        return (*work(), False)
    req_hash = idem.request_hash(path, body)
    for _ in range(3):
        if idem.claim(state.db, tenant, key, req_hash, state.settings.idempotency_ttl_s):
            try:
                status, payload = work()
            except ApiError as exc:
                if exc.status >= 500 or exc.status == 429:
                    idem.release(state.db, tenant, key)  # not accepted: the client may retry
                else:
                    idem.complete(state.db, tenant, key, idem.Stored(exc.status, {"detail": exc.detail}))
                raise
            except BaseException:
                idem.release(state.db, tenant, key)
                raise
            idem.complete(state.db, tenant, key, idem.Stored(status, payload))
            return status, payload, False
        try:
            stored = idem.wait_for(state.db, tenant, key, req_hash, state.settings.query_timeout_s + 5)
        except idem.KeyReused as exc:
            raise ApiError(
                422, f"Idempotency-Key {key!r} was used with a different request body: use a new key for a new request"
            ) from exc
        except idem.StillRunning as exc:
            raise ApiError(
                409, f"a request with Idempotency-Key {key!r} is still running: retry later", {"Retry-After": "1"}
            ) from exc
        if stored is not None:
            return stored.status_code, stored.body, True
    raise ApiError(409, f"Idempotency-Key {key!r} is contended: retry later", {"Retry-After": "1"})
