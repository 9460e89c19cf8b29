"""Helpers for serving tests: a real Celery worker subprocess and a real uvicorn server in a thread."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
import uvicorn
from pydantic import SecretStr

from serving.api import create_app
from serving.auth import create_key
from serving.http_deadlines import deadline_protocol
from sluice.db import Database, create_tenant
from sluice.settings import PROJECT_ROOT, Settings

# A Redis database of its own on the shared server (1-14, by checkout path). Modules that start workers
# use a private redis-server instead (the `private_redis` fixture, RedisServer below): two workers on one
# database would answer each other's pings and take each other's tasks.
TEST_REDIS = f"redis://127.0.0.1:6379/{1 + zlib.crc32(str(PROJECT_ROOT).encode()) % 14}"


def guarded_pythonpath() -> str:
    """PYTHONPATH for a test subprocess: the network guard's folder first (see tests/netguard), then the project."""
    return os.pathsep.join((str(PROJECT_ROOT / "tests" / "netguard"), str(PROJECT_ROOT)))


def settings_env(settings: Settings) -> dict[str, str | None]:
    """Every Settings field as its SLUICE_* variable, so that a subprocess reads `settings` back; None = unset."""
    return {f"SLUICE_{name.upper()}": _env_value(getattr(settings, name)) for name in Settings.model_fields}


def _env_value(value: object) -> str | None:
    plain = _plain(value)
    return plain if plain is None or isinstance(plain, str) else json.dumps(plain)


def _plain(value: object) -> object:
    """A field's value as pydantic-settings parses it from the environment: secrets revealed, paths as text."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return str(value) if isinstance(value, Path) else value


def worker_env(settings: Settings) -> dict[str, str]:
    """This process's environment with `settings` in place of any SLUICE_* value, for a worker or `sluice serve`."""
    env = dict(os.environ, PYTHONPATH=guarded_pythonpath())
    for name, value in settings_env(settings).items():
        env.pop(name, None)
        if value is not None:
            env[name] = value
    return env


def start_worker(
    settings: Settings,
    log: Path,
    concurrency: int = 1,
    extra_env: dict[str, str] | None = None,
    name: str = "sluice@%h",
) -> subprocess.Popen:
    """Start `sluice worker` (Celery node `name`) and wait until it has loaded its embedder and answers pings."""
    cmd = [sys.executable, "-m", "cli", "worker", "--concurrency", str(concurrency), "--loglevel", "INFO"]
    cmd += ["--name", name]
    proc = subprocess.Popen(
        cmd,
        env={**worker_env(settings), **(extra_env or {})},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}: {log.read_text()[-2000:]}")
        if "ready." in log.read_text() and _warm(log, concurrency):
            return proc
        time.sleep(0.5)
    stop_worker(proc)
    raise RuntimeError(f"worker not ready in time: {log.read_text()[-2000:]}")


@contextmanager
def api_subprocess(
    settings: Settings, log: Path, extra_env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`sluice serve` as a subprocess (its own GIL, as deployed) on a free port: (URL, process); stopped on exit."""
    port = free_port()
    cmd = [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    env = {**worker_env(settings), **(extra_env or {})}
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(proc, url, log)
        yield url, proc
    finally:
        stop_worker(proc)  # any process group: SIGTERM, then SIGKILL after a grace period


def wait_up(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sluice serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"sluice serve did not come up: {log.read_text()[-2000:]}")


def _warm(log: Path, concurrency: int) -> bool:
    return log.read_text().count("worker process warm") >= concurrency


def stop_worker(proc: subprocess.Popen) -> None:
    """Warm shutdown (SIGTERM) of the worker's process group; kill after a grace period."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def assert_refused(response, allowed: set[int], says: str) -> None:
    """The status is one of `allowed`; an error carries a non-empty detail that mentions `says`."""
    assert response.status_code in allowed, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        assert response.json()["detail"], response.text[:300]
        assert says in json.dumps(response.json(), ensure_ascii=False), response.text[:500]


def refusal_cases(cases: list[tuple]) -> pytest.MarkDecorator:
    """Parametrize over rows (id, method, path, request kwargs, allowed statuses, text an error must contain)."""
    names = ("method", "path", "kwargs", "allowed", "says")
    return pytest.mark.parametrize(names, [case[1:] for case in cases], ids=[case[0] for case in cases])


def assert_request_refused(api: ApiServer | Stack, key: str, method: str, path: str, kwargs: dict, allowed, says):
    """Send one request as the holder of `key`; its answer is one of `allowed`, an error saying `says`."""
    with api.client(key, timeout=120) as client:
        response = client.request(method, path, **kwargs)
    assert_refused(response, allowed, says)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A private `redis-server` on a free loopback port, data in `folder`, append-only file fsynced per write.

    Each test module that starts workers gets one: Celery's broadcast (ping, inspect) and its queues
    are per Redis database, so a worker of another module on a shared database would answer pings
    and take this module's tasks. The AOF makes a kill -9 and restart lose nothing acknowledged.
    """

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder), "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--logfile", str(self.folder / "redis.log")]
        self.proc = subprocess.Popen([binary, *args], start_new_session=True, stdout=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.ping():
                    return self
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start: {self._log()}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """kill -9: no shutdown save, no goodbye to clients."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def _log(self) -> str:
        log = self.folder / "redis.log"
        return log.read_text()[-2000:] if log.exists() else "(no log)"

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RabbitServer:
    """A private RabbitMQ node (Debian's rabbitmq-server) on free loopback ports, its data in `folder`.

    Its own node name, AMQP and distribution ports, Mnesia folder, logs, Erlang cookie (HOME) and no
    plugins: it shares nothing with a system RabbitMQ on 5672, which keeps running for everyone else.
    Queues are durable and messages persistent (serving.celery_app), so a kill -9 loses no confirmed one.
    """

    BINARY = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # the node itself, not Debian's wrapper (it su's to rabbitmq)

    def __init__(self, folder: Path):
        self.folder, self.port, self.dist_port = folder, free_port(), free_port()
        self.node = f"sluice-{self.port}@localhost"
        self.proc: subprocess.Popen | None = None
        (folder / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users.guest = true\n"
            "consumer_timeout = 7200000\n"  # an ingest holds its unacked message for up to 32 min (acks_late)
        )
        (folder / "enabled_plugins").write_text("[].\n")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _env(self) -> dict[str, str]:
        f = self.folder
        return dict(
            os.environ,
            HOME=str(f),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(f / "mnesia"),
            RABBITMQ_LOG_BASE=str(f / "log"),
            RABBITMQ_CONFIG_FILE=str(f / "rabbitmq"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(f / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(f / "rabbitmq.pid"),
        )

    def start(self) -> RabbitServer:
        if not Path(self.BINARY).exists():
            raise RuntimeError("rabbitmq-server is not installed: run scripts/ensure-rabbitmq.sh")
        log = (self.folder / "node.log").open("a")
        self.proc = subprocess.Popen(
            [self.BINARY], env=self._env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 240  # a node boots in ~5 s on an idle host, over a minute on a loaded one
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rabbitmq-server did not start: {self._log()}")
            time.sleep(0.25)
        return self

    def answers(self) -> bool:
        """Whether the node answers the AMQP 0-9-1 protocol header (with connection.start)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(b"AMQP\x00\x00\x09\x01")
                return sock.recv(1) == b"\x01"
        except OSError:
            return False

    def kill(self) -> None:
        """kill -9 of the node's whole process group: no clean shutdown of its queues."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()

    def _log(self) -> str:
        log = self.folder / "node.log"
        return log.read_text()[-2000:] if log.exists() else "(no log)"

    def __enter__(self) -> RabbitServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ApiServer:
    """create_app(settings) served by uvicorn on a free loopback port, in a thread of this process."""

    def __init__(self, settings: Settings, beside=None):
        self.port = free_port()
        self.app = create_app(settings, beside=beside)
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            timeout_keep_alive=settings.keep_alive_s,
            http=deadline_protocol(settings),  # as `sluice serve`
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ApiServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("API server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def client(self, key: str | None = None, timeout: float = 60) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)


class Background:
    """Runs `_run` in a daemon thread from `with` to its end; `_run` loops until `_stop` is set."""

    join_s = 30.0

    def __init__(self):
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join(timeout=self.join_s)


def wait_job(client: httpx.Client, job_id: str, timeout: float = 120) -> dict:
    """Poll GET /v1/jobs/{id} until it succeeds or fails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/v1/jobs/{job_id}").json()
        if body["status"] in ("succeeded", "failed"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s")


@dataclass
class Stack:
    """A running API and `sluice worker` for one Settings; `api` is None when the API runs in a thread here."""

    settings: Settings
    url: str
    folder: Path
    worker: subprocess.Popen | None
    api: subprocess.Popen | None

    @property
    def worker_log(self) -> Path:
        return self.folder / "worker.log"

    @property
    def api_log(self) -> Path:
        return self.folder / "api.log"

    def client(self, key: str | None = None, timeout: float = 60) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)


@contextmanager
def serving_stack(
    settings: Settings,
    folder: Path,
    concurrency: int = 1,
    api_process: bool = False,
    worker_settings: Settings | None = None,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """A warm worker (`concurrency` processes, `worker_settings` or `settings`; none if 0) and an API for `settings`.

    The API runs in a thread of this process, or as `sluice serve` with `api_process`; `extra_env` goes to
    each subprocess; logs are written in `folder`. Everything is stopped on exit.
    """
    with ExitStack() as running:
        worker = None
        if concurrency:
            worker = start_worker(worker_settings or settings, folder / "worker.log", concurrency, extra_env)
            running.callback(stop_worker, worker)
        if api_process:
            url, api = running.enter_context(api_subprocess(settings, folder / "api.log", extra_env))
        else:
            url, api = running.enter_context(ApiServer(settings)).url, None
        yield Stack(settings, url, folder, worker, api)


def stack_settings(base: Settings, name: str, config_dir: Path, broker_url: str | None, **update: object) -> Settings:
    """`base` on `broker_url` with a config file of its own (named `name`) and rate limits no test reaches."""
    config = config_dir / "pipeline.yaml"
    config.write_text(f"name: {name}\n")  # the default config: the name is not part of its id
    fields = {"broker_url": broker_url, "config_path": config, "rate_limit_per_s": 1000.0, "rate_limit_burst": 1000.0}
    return base.model_copy(update={**fields, **update})


def run_job(client: httpx.Client, job: dict, timeout: float = 300) -> dict:
    """POST /v1/jobs and wait for it; the finished job, which must have succeeded."""
    r = client.post("/v1/jobs", json=job)
    assert r.status_code == 202, r.text
    done = wait_job(client, r.json()["job_id"], timeout=timeout)
    assert done["status"] == "succeeded", done
    return done


def keyed_tenant(db: Database, prefix: str) -> tuple[str, str]:
    """A new tenant named `prefix-<random>` and the secret of an API key for it."""
    tenant = f"{prefix}-{uuid.uuid4().hex[:8]}"
    create_tenant(db, tenant)
    return tenant, create_key(db, tenant).secret


def upload_payload(db: Database, tenant: str, files: dict[str, bytes]) -> dict:
    """An ingest task's payload as the API sends it: the files stored in the database's upload store, by id."""
    from serving.upload_store import NewFile, PostgresStore, pieces_of, save

    stored = [NewFile(name, len(data), pieces_of(data)) for name, data in files.items()]
    return {"tenant": tenant, "uploads": save(db, PostgresStore(), tenant, stored)}
