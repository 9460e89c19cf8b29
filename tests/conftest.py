"""Shared fixtures: a real embedded Postgres + pgvector, migrated fresh per session, and a network guard."""

from __future__ import annotations

import ipaddress
import socket
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from sluice.config import PipelineConfig
from sluice.db import Database, admin_conninfo, create_tenant, migrate
from sluice.settings import PROJECT_ROOT, load_settings

SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
SAMPLE = PROJECT_ROOT / "data" / "sample"
TEST_DB = "sluice_test"

# ---------------------------------------------------------------- network guard
_attempts: list[str] = []
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def is_local_address(address: object) -> bool:
    """True for Unix sockets and loopback hosts; everything else is outbound."""
    if isinstance(address, (str, bytes)):
        return True  # AF_UNIX path
    host = address[0] if isinstance(address, tuple) else address
    if host in ("localhost", "", None):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _guarded_connect(self, address):
    if self.family != socket.AF_UNIX and not is_local_address(address):
        _attempts.append(repr(address))
        raise OSError(f"network guard: outbound connection to {address!r} refused in tests")
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    if self.family != socket.AF_UNIX and not is_local_address(address):
        _attempts.append(repr(address))
        raise OSError(f"network guard: outbound connection to {address!r} refused in tests")
    return _real_connect_ex(self, address)


def _guarded_getaddrinfo(host, *args, **kwargs):
    if host is not None and not is_local_address((host.decode() if isinstance(host, bytes) else host,)):
        _attempts.append(f"resolve {host!r}")
        raise socket.gaierror(f"network guard: name lookup of {host!r} refused in tests")
    return _real_getaddrinfo(host, *args, **kwargs)


def pytest_configure(config):
    socket.socket.connect = _guarded_connect
    socket.socket.connect_ex = _guarded_connect_ex
    socket.getaddrinfo = _guarded_getaddrinfo


@pytest.fixture(autouse=True)
def no_outbound_network():
    """Fail any test during which code tried to reach beyond loopback."""
    start = len(_attempts)
    yield
    tried = _attempts[start:]
    assert not tried, f"outbound network attempts: {tried}"


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
