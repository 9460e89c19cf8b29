"""Size the embedded PostgreSQL to the machine it runs on (`sluice db up`), instead of its 128 MB defaults.

The embedded server shares the machine with the API and the workers (each worker holds a model), so it
takes less than a dedicated server would: an eighth of the memory for shared buffers, not a quarter.
Values in `SLUICE_PG_SETTINGS` win over the computed ones. A server at `SLUICE_DATABASE_URL` is never
touched: its operator sizes it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import psycopg
from psycopg import sql

from sluice.errors import ConfigError

MiB = 1024 * 1024
RESTART_NEEDED = {"shared_buffers", "max_worker_processes"}  # the others take effect on reload
_UNITS = {"B": 1, "kB": 1024, "MB": MiB, "GB": 1024 * MiB, "TB": 1024 * 1024 * MiB}
_SIZE = re.compile(r"\s*(\d+)\s*(B|kB|MB|GB|TB)?\s*")


def machine_memory() -> int:
    """Memory this process may use: physical memory, or the cgroup's limit when a container sets one."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return physical
    return min(physical, int(limit)) if limit.isdigit() else physical


def recommended(memory: int | None = None, cores: int | None = None) -> dict[str, str]:
    """Settings for an embedded server sharing a machine of `memory` bytes and `cores` CPUs."""
    mb, cores = (memory or machine_memory()) // MiB, cores or os.cpu_count() or 1
    return {
        "shared_buffers": f"{min(mb // 8, 8192)}MB",
        "effective_cache_size": f"{mb // 2}MB",
        "maintenance_work_mem": f"{min(mb // 16, 2048)}MB",  # an HNSW build wants its whole graph in memory
        "work_mem": f"{max(4, min(mb // 512, 64))}MB",
        "max_parallel_maintenance_workers": str(max(1, min(cores - 1, 4))),
        "max_parallel_workers_per_gather": str(max(1, min(cores // 2, 4))),
    }


def _in_bytes(value: str, unit: str | None) -> int | None:
    """A memory setting in bytes (`value` in `unit`, or with its own suffix); None if not a size."""
    match = _SIZE.fullmatch(value)
    if match is None:
        return None
    number, suffix = int(match.group(1)), match.group(2)
    base = _UNITS.get(suffix or "", None) if suffix else _unit_bytes(unit)
    return None if base is None else number * base


def _unit_bytes(unit: str | None) -> int | None:
    if not unit:
        return None
    match = re.fullmatch(r"(\d*)(B|kB|MB|GB|TB)", unit)
    return None if match is None else int(match.group(1) or 1) * _UNITS[match.group(2)]


def _differs(current: str, unit: str | None, wanted: str) -> bool:
    have, want = _in_bytes(current, unit), _in_bytes(wanted, unit)
    return (have != want) if have is not None and want is not None else current != wanted


def apply(conn: psycopg.Connection, wanted: dict[str, str]) -> tuple[dict[str, str], bool]:
    """ALTER SYSTEM the settings that differ; return those and whether the server must restart for them."""
    changed: dict[str, str] = {}
    for name, value in wanted.items():
        row = conn.execute("SELECT setting, unit FROM pg_settings WHERE name = %s", (name,)).fetchone()
        if row is None:
            raise ConfigError(f"unknown PostgreSQL setting {name!r} in SLUICE_PG_SETTINGS: remove or rename it")
        if _differs(row[0], row[1], value):
            conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
            changed[name] = value
    if changed:
        conn.execute("SELECT pg_reload_conf()")
    return changed, bool(RESTART_NEEDED & changed.keys())
