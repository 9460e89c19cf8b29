"""The embedded server is sized to the machine: computed values, unit-aware comparison, ALTER SYSTEM."""

from __future__ import annotations

import time

import psycopg
import pytest

from sluice import pgtune
from sluice.db import admin_conninfo
from sluice.errors import ConfigError

GiB = 1024 * pgtune.MiB


def test_recommended_scales_with_the_machine():
    small, large = pgtune.recommended(2 * GiB, 1), pgtune.recommended(64 * GiB, 16)
    assert small["shared_buffers"] == "256MB" and small["max_parallel_maintenance_workers"] == "1"
    assert large["shared_buffers"] == "8192MB" and large["maintenance_work_mem"] == "2048MB"
    assert large["max_parallel_maintenance_workers"] == "4" and large["effective_cache_size"] == "32768MB"


@pytest.mark.parametrize(
    ("current", "unit", "wanted", "differs"),
    [
        ("16384", "8kB", "128MB", False),
        ("16384", "8kB", "1GB", True),
        ("4096", "kB", "4MB", False),
        ("2", None, "1", True),
    ],
)
def test_values_are_compared_in_the_servers_units(current, unit, wanted, differs):
    assert pgtune._differs(current, unit, wanted) is differs


def test_apply_changes_only_what_differs_and_refuses_unknown_names(migrated):
    with psycopg.connect(admin_conninfo(migrated, dbname="postgres"), autocommit=True) as conn:
        before = conn.execute("SHOW work_mem").fetchone()[0]
        try:
            assert pgtune.apply(conn, {"work_mem": before}) == ({}, False)
            changed, restart = pgtune.apply(conn, {"work_mem": "7MB"})
            assert changed == {"work_mem": "7MB"} and restart is False
            assert _eventually_shown(migrated, "work_mem") == "7MB"  # pg_reload_conf signals; the postmaster rereads
            with pytest.raises(ConfigError, match="no_such_setting"):
                pgtune.apply(conn, {"no_such_setting": "1"})
        finally:
            pgtune.apply(conn, {"work_mem": before})
            conn.execute("SELECT pg_reload_conf()")


def _eventually_shown(settings, name: str, want: str = "7MB", tries: int = 50) -> str:
    for _ in range(tries):
        with psycopg.connect(admin_conninfo(settings, dbname="postgres")) as fresh:
            shown = fresh.execute(f"SHOW {name}").fetchone()[0]
        if shown == want:
            break
        time.sleep(0.1)
    return shown
