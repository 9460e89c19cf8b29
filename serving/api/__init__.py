"""The HTTP API. It enqueues work by task name and never imports worker code or the embedder.

One module per concern: `state` (per-process resources), `keys` (the key cache), `admit` (key, capacity
and rate limit before the body is read), `deps` (the admitted tenant, Idempotency-Key), `enqueue`
(capacity, job records, messages), `idempotent`, `uploads`, the routers `query`, `jobs` and `health`,
`body` (the size limit, while streaming), `middleware` (observation), `errors` and `responses`, and `app` (the factory).
"""

from serving.api.app import create_app

__all__ = ["create_app"]
