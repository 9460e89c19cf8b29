"""The one place serving gets its pipeline config from.

The active config is the promoted champion (`sluice champion promote`, recorded in Postgres);
until one is promoted, or with SLUICE_SERVE_CHAMPION=false, it is the configured default
(`SLUICE_CONFIG_PATH` or the built-in one). Workers call `active_config` per task: it re-reads only
a cheap version stamp (the newest champion event's id: one statement, one round trip; or the file's
mtime and size) and reloads when it changed, so a promotion or rollback is picked up without a restart.
"""

from __future__ import annotations

import threading

from sluice.champion import config_body, current_champion_id
from sluice.config import PipelineConfig, load_config
from sluice.db import Database
from sluice.settings import Settings

_lock = threading.Lock()
_current: tuple[tuple, PipelineConfig] | None = None
_champion_at: tuple[int, str | None] | None = None  # (newest event id, champion config id then)


def _champion(db: Database) -> str | None:
    """The champion's config id, re-derived from the history only when a promotion or rollback was added."""
    global _champion_at
    with db.statement() as conn:  # autocommit: one round trip, where a transaction costs three
        newest = conn.execute("SELECT max(event_id) FROM champion_history").fetchone()[0]
    if newest is None:
        return None
    seen = _champion_at
    if seen is None or seen[0] != newest:
        seen = _champion_at = (newest, current_champion_id(db))
    return seen[1]


def config_stamp(settings: Settings, db: Database | None = None) -> tuple:
    """A cheap value that changes whenever the active config does."""
    if db is not None and settings.serve_champion:
        champion = _champion(db)
        if champion:
            return ("champion", champion)
    path = settings.config_path
    if path is None:
        return ("builtin",)
    try:
        st = path.stat()
    except OSError:
        return (str(path), None)  # load_config raises the error that names the fix
    return (str(path), st.st_mtime_ns, st.st_size)


def _load(settings: Settings, db: Database | None, stamp: tuple) -> PipelineConfig:
    if stamp[0] == "champion" and db is not None:
        return config_body(db, stamp[1])
    return load_config(settings.config_path)


def active_config(settings: Settings, db: Database | None = None) -> PipelineConfig:
    """The config serving answers with; reloaded when its stamp changes."""
    global _current
    stamp = config_stamp(settings, db)
    current = _current
    if current is not None and current[0] == stamp:
        return current[1]
    with _lock:
        config = _load(settings, db, stamp)
        _current = (stamp, config)
    return config
