"""The HTTP API. It enqueues work by task name and never imports worker code or the embedder.

One module per concern: `state` (per-process resources), `deps` (tenant from the key, load shedding),
`enqueue` (capacity, job records, messages), `idempotent`, the routers `query`, `jobs` and `health`,
`middleware` (body limit, observation), `errors` and `responses`, and `app` (the factory).
"""

from serving.api.app import create_app

__all__ = ["create_app"]
