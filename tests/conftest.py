"""Shared fixtures: a real embedded Postgres + pgvector, migrated fresh per session, and a network guard."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from sluice.config import PipelineConfig
from sluice.db import Database, admin_conninfo, create_tenant, migrate
from sluice.settings import PROJECT_ROOT, load_settings
from tests.netguard import netguard
from tests.netguard.netguard import install, is_local_address

__all__ = ["is_local_address"]  # tests/test_text.py checks the classifier through this module

SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
SAMPLE = PROJECT_ROOT / "data" / "sample"
TEST_DB = "sluice_test"

# ---------------------------------------------------------------- network guard
# The guard runs in this process and, through tests/netguard/sitecustomize.py on PYTHONPATH, in every
# Python subprocess a test starts (workers, `sluice serve`, CLI runs); those record refusals in a file.
NETGUARD_DIR = Path(__file__).resolve().parent / "netguard"


def pytest_configure(config):
    install(netguard.attempts.append)
    fd, log = tempfile.mkstemp(prefix="sluice-netguard-", suffix=".log")
    os.close(fd)
    os.environ["NETGUARD_LOG"] = log
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(NETGUARD_DIR), os.environ.get("PYTHONPATH")) if p)


def pytest_unconfigure(config):
    Path(os.environ.pop("NETGUARD_LOG", "/nonexistent")).unlink(missing_ok=True)


def subprocess_attempts() -> list[str]:
    """Refusals recorded so far by guarded subprocesses of this run."""
    log = Path(os.environ["NETGUARD_LOG"])
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture(autouse=True)
def no_outbound_network():
    """Fail any test during which code, here or in a subprocess, tried to reach beyond loopback."""
    start, sub_start = len(netguard.attempts), len(subprocess_attempts())
    yield
    tried = netguard.attempts[start:] + subprocess_attempts()[sub_start:]
    assert not tried, f"outbound network attempts: {tried}"


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory):
    """A redis-server of this test module's own: its workers never see, nor take, another module's tasks."""
    from tests.serving_support import RedisServer

    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


# ---------------------------------------------------------------- database
@pytest.fixture(scope="session")
def settings(tmp_path_factory):
    return load_settings(db_name=TEST_DB)


@pytest.fixture(scope="session")
def migrated(settings):
    """A fresh, fully migrated test database on the embedded (or configured) server."""
    if not settings.database_url:
        with psycopg.connect(admin_conninfo(settings, dbname="postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(TEST_DB)))
    migrate(settings)
    return settings


@pytest.fixture(scope="session")
def db(migrated):
    database = Database(migrated)
    yield database
    database.close()


@pytest.fixture()
def admin(migrated):
    with psycopg.connect(admin_conninfo(migrated), autocommit=True) as conn:
        yield conn


@pytest.fixture()
def new_tenant(db):
    """Create and return a fresh tenant id."""

    def make(prefix: str = "t") -> str:
        tenant = f"{prefix}-{uuid.uuid4().hex[:10]}"
        assert create_tenant(db, tenant)
        return tenant

    return make


@pytest.fixture(scope="session")
def pipeline():
    return PipelineConfig()


@pytest.fixture(scope="session")
def embedder(pipeline):
    from tasks.embed import get_embedder

    emb = get_embedder(pipeline.embedder)
    emb.warm_up()
    return emb


@pytest.fixture(scope="session")
def sample_corpus() -> Path:
    return SAMPLE / "corpus"


@pytest.fixture(scope="module")
def no_champion_left(migrated):
    """Remove promotions a test made: the champion is global and would change what later tests serve."""
    yield
    with psycopg.connect(admin_conninfo(migrated), autocommit=True) as conn:
        conn.execute("TRUNCATE champion_history")
