"""Which config serves a tenant's collection: the one answer the CLI, flows, API uploads and workers ask.

A tenant's collection is served by, in order:
- its *target*: the champion in force for it (its own, else the global one), else the configured default
  (`SLUICE_CONFIG_PATH` or the built-in config), whenever the target's index is the one the tenant is on;
- else the config and index of its row in `active_indexes` (the collection's, else the tenant's `default`
  row), written by a rollout's switch, by `sluice index activate`, or pinned by the tenant's first
  ingestion (`pin`). The index (with its own parser, chunker and embedder) is what queries read, what
  queries are embedded for, and what ingestion writes.
So a promotion that keeps the index (retrieval, routing, generation) applies at once, and one that changes
the index applies to a tenant once a rollout (tasks/rollout.py) has built the new index beside the served
one and switched the row; until then the tenant keeps its previous config and index.

`Resolver` caches only what cannot change under an id (config and index bodies) and the champion map per
newest history event, so a worker pays one pipelined round trip per query for the row, the event id and the
corpus version, all read in one snapshot.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from sluice import champion
from sluice.config import PipelineConfig, load_config, parse_config
from sluice.db import Database
from sluice.errors import ConfigError
from sluice.settings import Settings

# Corpus version, newest champion event and the collection's row (else the tenant's default row), one snapshot.
_SNAPSHOT = (
    "SELECT coalesce((SELECT version FROM corpus_versions), 0), (SELECT max(event_id) FROM champion_history), "
    "a.config_id, a.index_id FROM (SELECT 1) one LEFT JOIN LATERAL (SELECT config_id, index_id FROM active_indexes "
    "WHERE collection IN (%s, 'default') ORDER BY collection = %s DESC LIMIT 1) a ON true"
)


@dataclass(frozen=True)
class Served:
    """What a tenant's collection is served with right now."""

    tenant: str
    collection: str
    config: PipelineConfig  # retrieval, routing, generation; its index_id is the served index
    target: PipelineConfig  # what the tenant should be served: its champion, else the global one, else the default
    pinned: bool  # a row says so (else it follows the target)
    version: int  # the tenant's corpus version, read with the row
    key_config_id: str  # the global champion's (or default) config id: what answer-cache keys carry

    @property
    def index_id(self) -> str:
        return self.config.index_id

    @property
    def pending(self) -> bool:
        """A rollout has work to do: the tenant's target index is not the one it is served."""
        return self.config.index_id != self.target.index_id


class Resolver:
    """Resolve served configs; one per process is enough (everything cached is immutable or stamped)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bodies: dict[tuple[str, str | None], PipelineConfig] = {}
        self._champions: tuple[int | None, dict[str | None, str]] = (None, {})
        self._default: tuple[tuple, PipelineConfig] | None = None

    def served(self, settings: Settings, db: Database, tenant: str, collection: str = "default") -> Served:
        """The served config of a tenant's collection (see the module docstring)."""
        version, newest, config_id, index_id = db.execute_as(tenant, _SNAPSHOT, (collection, collection))[0]
        found = self._champion_map(settings, db, newest)
        target = self._pick(settings, db, found, tenant)
        key = self._pick(settings, db, found, None)
        config = target
        if index_id is not None and index_id != target.index_id:  # still on another index: its own config
            config = self.body(db, config_id or target.config_id, index_id)
        return Served(tenant, collection, config, target, index_id is not None, int(version), key.config_id)

    def target(self, settings: Settings, db: Database, tenant: str | None) -> PipelineConfig:
        """What a tenant should be served (None: the global champion, else the default)."""
        with db.statement() as conn:  # autocommit: one round trip
            newest = conn.execute("SELECT max(event_id) FROM champion_history").fetchone()[0]
        return self._pick(settings, db, self._champion_map(settings, db, newest), tenant)

    def body(self, db: Database, config_id: str, index_id: str | None = None) -> PipelineConfig:
        """A stored config; with `index_id`, its parser, chunker and embedder replaced by that index's."""
        key = (config_id, index_id)
        if key not in self._bodies:
            config = champion.config_body(db, config_id)
            if index_id is not None and index_id != config.index_id:
                config = _with_index(config, _index_stages(db, index_id), index_id)
            self._bodies[key] = config
        return self._bodies[key]

    def _champion_map(self, settings: Settings, db: Database, newest: int | None) -> dict[str | None, str]:
        if not settings.serve_champion or newest is None:
            return {}
        seen = self._champions
        if seen[0] != newest:
            with self._lock:
                seen = self._champions = (newest, champion.champions(champion.history(db, upto=newest)))
        return seen[1]

    def _pick(self, settings: Settings, db: Database, found: dict[str | None, str], tenant: str | None):
        config_id = found.get(tenant) if tenant is not None else None
        config_id = config_id or found.get(None)
        return self.body(db, config_id) if config_id else self.default(settings)

    def default(self, settings: Settings) -> PipelineConfig:
        """The configured default (`SLUICE_CONFIG_PATH` or built-in), reloaded when the file changes."""
        stamp = _file_stamp(settings)
        current = self._default
        if current is None or current[0] != stamp:
            current = self._default = (stamp, load_config(settings.config_path))
        return current[1]


def _file_stamp(settings: Settings) -> tuple:
    path = settings.config_path
    if path is None:
        return ("builtin",)
    try:
        st = path.stat()
    except OSError:
        return (str(path), None)  # load_config raises the error that names the fix
    return (str(path), st.st_mtime_ns, st.st_size)


def _index_stages(db: Database, index_id: str) -> dict[str, Any]:
    with db.shared() as conn:
        row = conn.execute("SELECT body FROM indexes WHERE index_id = %s", (index_id,)).fetchone()
    if row is None:
        raise ConfigError(f"index {index_id} is not registered: ingest with its config first")
    return row[0]


def _with_index(config: PipelineConfig, stages: dict[str, Any], index_id: str) -> PipelineConfig:
    """The config with an index's parser, chunker and embedder (an index activated by hand)."""
    body = {**config.model_dump(mode="json"), **stages}
    combined = parse_config(body, source=f"config {config.config_id} on index {index_id}")
    if combined.index_id != index_id:
        raise ConfigError(f"index {index_id}'s stored stages hash to {combined.index_id}: the index row is corrupt")
    return combined


def served(settings: Settings, db: Database, tenant: str, collection: str = "default") -> Served:
    """The served config of a tenant's collection, read now (CLI and flows: no cache kept)."""
    return Resolver().served(settings, db, tenant, collection)


def pin(conn, config: PipelineConfig) -> bool:
    """Pin a tenant that has no row to the config it is being served (call inside `Database.tenant`).

    The first ingestion does this, so that a later promotion does not move the tenant onto an index that
    has never been built: the tenant stays on this config until a rollout switches it. The config and its
    index must be registered (tasks.store.register_index). Returns whether a row was written.
    """
    return (
        conn.execute(
            "INSERT INTO active_indexes (tenant_id, collection, index_id, config_id) "
            "VALUES (current_setting('app.tenant_id'), 'default', %s, %s) ON CONFLICT DO NOTHING",
            (config.index_id, config.config_id),
        ).rowcount
        == 1
    )


def all_tenants(db: Database) -> list[str]:
    """Every tenant id (through `list_tenants()`, the one way to list them: ids only, no data)."""
    with db.statement() as conn:
        return [r[0] for r in conn.execute("SELECT * FROM list_tenants()").fetchall()]


def pin_unpinned(settings: Settings, db: Database, tenants: list[str]) -> list[str]:
    """Pin each tenant that has documents in the index it is served but no row; return them.

    Called before a promotion or rollback changes targets: a tenant stored before rows were kept (or only
    ever ingested by an evaluation) would otherwise follow the new target onto an index not built for it.
    """
    resolver, pinned = Resolver(), []
    for tenant in tenants:
        now = resolver.served(settings, db, tenant)
        if now.pinned:
            continue
        champion.store_config(db, now.config)
        with db.tenant(tenant) as conn:
            found = conn.execute("SELECT 1 FROM indexed_documents WHERE index_id = %s LIMIT 1", (now.index_id,))
            if found.fetchone() and pin(conn, now.config):
                pinned.append(tenant)
    return pinned
