"""Serving's access to `sluice.served`, through one resolver per process.

Workers call `served_config` per task (one pipelined round trip: the tenant's row, the newest champion
event and the corpus version; bodies are cached by id), so a rollout's switch, a promotion or a rollback
is picked up without a restart. `active_config` is the global champion (else the configured default):
the config id the API puts in answer-cache keys, which the worker must put in the same keys.
"""

from __future__ import annotations

from sluice.config import PipelineConfig
from sluice.db import Database
from sluice.served import Resolver, Served
from sluice.settings import Settings

_resolver = Resolver()


def served_config(settings: Settings, db: Database, tenant: str, collection: str | None = None) -> Served:
    """What the tenant's collection is served with right now."""
    return _resolver.served(settings, db, tenant, collection or "default")


def active_config(settings: Settings, db: Database | None = None) -> PipelineConfig:
    """The global champion, else the configured default (without a database: the configured default)."""
    if db is None:
        return _resolver.default(settings)
    return _resolver.target(settings, db, None)
