"""The one place serving gets its pipeline config from.

Until the evaluation issue promotes a champion, the active config is the configured default
(`SLUICE_CONFIG_PATH` or the built-in one). Workers call `active_config` per task: it re-reads only
a cheap version stamp (the file's mtime and size) and reloads when it changed, so a new config is
picked up without a restart. Wiring in the champion means changing `config_stamp` and `_load` here.
"""

from __future__ import annotations

import threading

from sluice.config import PipelineConfig, load_config
from sluice.db import Database
from sluice.settings import Settings

_lock = threading.Lock()
_current: tuple[tuple, PipelineConfig] | None = None


def config_stamp(settings: Settings, db: Database | None = None) -> tuple:
    """A cheap value that changes whenever the active config does."""
    path = settings.config_path
    if path is None:
        return ("builtin",)
    try:
        st = path.stat()
    except OSError:
        return (str(path), None)  # load_config raises the error that names the fix
    return (str(path), st.st_mtime_ns, st.st_size)


def _load(settings: Settings, db: Database | None) -> PipelineConfig:
    return load_config(settings.config_path)


def active_config(settings: Settings, db: Database | None = None) -> PipelineConfig:
    """The config serving answers with; reloaded when its stamp changes."""
    global _current
    stamp = config_stamp(settings, db)
    current = _current
    if current is not None and current[0] == stamp:
        return current[1]
    with _lock:
        config = _load(settings, db)
        _current = (stamp, config)
    return config
