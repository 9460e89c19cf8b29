"""Shared fixtures: a real embedded Postgres + pgvector, migrated fresh per session, and a network guard."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from sluice.config import PipelineConfig
from sluice.db import Database, admin_conninfo, create_tenant, drop_database, migrate
from sluice.settings import PROJECT_ROOT, Settings, load_settings
from tests.netguard import netguard
from tests.netguard.netguard import install, is_local_address

__all__ = ["is_local_address"]  # tests/test_text.py checks the classifier through this module

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


def pytest_collection_modifyitems(items):
    # `-m datasets` selects (`-m "not datasets"` drops) the tests that read external corpora.
    for item in items:
        if "dataset" in getattr(item, "fixturenames", ()):
            item.add_marker("datasets")


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


@pytest.fixture(scope="module")
def stack_settings(migrated, private_redis, tmp_path_factory):
    """Settings for a module's serving stack: stack_settings(name, **update), on the module's own redis-server."""
    from tests.serving_support import stack_settings as make

    return lambda name, **update: make(migrated, name, tmp_path_factory.mktemp("config"), private_redis.url, **update)


@pytest.fixture(scope="module")
def start_stack(tmp_path_factory):
    """Start an API and a worker: start_stack(settings, **options) -> Stack (tests.serving_support.serving_stack).

    Every stack this module started is stopped at the module's end.
    """
    from tests.serving_support import serving_stack

    with ExitStack() as stacks:
        yield lambda settings, **options: stacks.enter_context(
            serving_stack(settings, tmp_path_factory.mktemp("stack"), **options)
        )


# ---------------------------------------------------------------- database
@pytest.fixture(scope="session")
def settings(tmp_path_factory):
    return load_settings(db_name=TEST_DB)


@pytest.fixture(scope="session")
def migrated(settings):
    """A fresh, fully migrated test database on the embedded (or configured) server."""
    drop_database(settings)
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
def sluice_cli(migrated, monkeypatch, tmp_path) -> Callable:
    """Run `sluice ARGS` in this process on the test database, with MLflow under `tmp_path`; the click Result."""
    from typer.testing import CliRunner

    from cli.main import app

    monkeypatch.setenv("SLUICE_DB_NAME", migrated.db_name)
    monkeypatch.setenv("SLUICE_MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("SLUICE_MLFLOW_ARTIFACT_DIR", str(tmp_path / "artifacts"))
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


@pytest.fixture()
def new_tenant(db):
    """Create and return a fresh tenant id."""

    def make(prefix: str = "t") -> str:
        tenant = f"{prefix}-{uuid.uuid4().hex[:10]}"
        assert create_tenant(db, tenant)
        return tenant

    return make


@pytest.fixture(scope="module")
def throwaway(db):
    """Create tenants a module fills with bulk synthetic rows; they and their data go when the module ends.

    The test database lives for the whole session, and a promotion rolls the new champion out to every
    tenant: 40k synthetic documents left behind made a later eval test's rollout re-chunk and embed them
    all (past its 15-minute limit).
    """
    from tasks.beir import drop_tenant_data

    made: list[str] = []

    def make(tenant: str) -> str:
        create_tenant(db, tenant)
        made.append(tenant)
        return tenant

    yield make
    for tenant in made:
        drop_tenant_data(db, tenant)


@contextmanager
def scratch_database(name: str):
    """Settings of a database of the test's own, dropped before and after (the embedded server only)."""
    settings = load_settings(db_name=name)
    if settings.database_url:
        pytest.skip("needs the embedded server: the test creates and drops a database of its own")

    drop_database(settings)
    try:
        yield settings
    finally:
        drop_database(settings)


def hnsw_plan(conn: psycopg.Connection, index_id: str, q, filters: dict | None = None, k: int = 10) -> str:
    """EXPLAIN of the dense HNSW statement `dense_search` runs for `q` over the graph the calling tenant searches
    (sorts discouraged, so a usable graph is used)."""
    from tasks import retrieve as R

    conn.execute("SET LOCAL enable_sort = off")
    params = {"q": q, "index_id": index_id, "k": k, "fetch": k}
    rows = R.ann_rows(conn, R.graph_beam(conn, index_id), params, filters, sql.Literal(q.shape[0]), "EXPLAIN ")
    return "\n".join(r[0] for r in rows)


def tenant_rows(db: Database, tenant: str, query: str) -> list[tuple]:
    """All rows of `query` as `tenant` sees them (under its row-level security)."""
    with db.tenant(tenant) as conn:
        return conn.execute(query).fetchall()


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


# ---------------------------------------------------------------- command line
class Cli:
    """`sluice ARGS` with a test's settings: in this process (CliRunner), or as a `python -m cli` subprocess."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def __call__(self, *args: str, settings: Settings | None = None, env: dict[str, str | None] | None = None):
        """Invoke the Typer app in this process; `env` adds variables (None unsets one)."""
        from typer.testing import CliRunner

        from cli.main import app
        from tests.serving_support import settings_env

        env = {**settings_env(settings or self.settings), **(env or {})}
        return CliRunner().invoke(app, [str(a) for a in args], env=env)

    def popen(self, *args: str, settings: Settings | None = None, env: dict[str, str | None] | None = None, **kw):
        """Start `python -m cli ARGS` from the project root; `kw` goes to subprocess.Popen."""
        import subprocess
        import sys

        from tests.serving_support import worker_env

        full = {**worker_env(settings or self.settings), **(env or {})}
        full = {name: value for name, value in full.items() if value is not None}
        return subprocess.Popen([sys.executable, "-m", "cli", *args], env=full, cwd=PROJECT_ROOT, **kw)

    def run(self, *args: str, settings: Settings | None = None, env: dict[str, str | None] | None = None, timeout=300):
        """Run `python -m cli ARGS` to its end: a CompletedProcess with its text output."""
        import subprocess

        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        with self.popen(*args, settings=settings, env=env, **pipes) as p:
            out, err = p.communicate(timeout=timeout)
        return subprocess.CompletedProcess(p.args, p.returncode, out, err)


@pytest.fixture()
def cli(migrated) -> Cli:
    """Run the command line with the test's settings: cli("ingest", path, "--tenant", t), cli.popen(...)."""
    return Cli(migrated)


@pytest.fixture()
def eval_cli(migrated, tmp_path) -> Cli:
    """As `cli`, with MLflow's tracking database and artifacts in the test's own folder."""
    mlflow = {
        "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "mlflow_artifact_dir": tmp_path / "artifacts",
    }
    return Cli(migrated.model_copy(update=mlflow))


# ---------------------------------------------------------------- documents
@pytest.fixture(scope="session")
def docs(tmp_path_factory) -> Path:
    """A folder of the generated test documents (tests/fixtures/make_docs.py), one per format and shape."""
    from tests.fixtures.make_docs import write_all

    folder = tmp_path_factory.mktemp("docs")
    write_all(folder)
    return folder


def dataset_files(name: str) -> list[str]:
    """Names of the files in external corpus `name`, for parametrising; [] when it is not there."""
    root = Settings().datasets_dir
    folder = root / name if root is not None else None
    return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder and folder.is_dir() else []


@pytest.fixture(scope="session")
def dataset(settings) -> Callable[[str], Path]:
    """Path of an external corpus under SLUICE_DATASETS_DIR; skips the test, saying how to enable it, when unset.

    Set but without the corpus is a failure (a ConfigError naming the folder), not a skip.
    """

    def find(name: str) -> Path:
        if settings.datasets_dir is None:
            pytest.skip(
                f"needs the external corpus {name}/: set SLUICE_DATASETS_DIR to the folder that holds it "
                "(e.g. SLUICE_DATASETS_DIR=/path/to/data)"
            )
        return settings.dataset_path(name)

    return find


@pytest.fixture(scope="module")
def no_champion_left(migrated):
    """Remove promotions a test made: the champion is global and would change what later tests serve."""
    yield
    with psycopg.connect(admin_conninfo(migrated), autocommit=True) as conn:
        conn.execute("TRUNCATE champion_history")
