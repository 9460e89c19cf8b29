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
import zlib
from pathlib import Path

import httpx
import redis
import uvicorn

from serving.api import create_app
from serving.http_deadlines import deadline_protocol
from sluice.settings import PROJECT_ROOT, Settings

# A Redis database of its own on the shared server (1-14, by checkout path). Modules that start workers
# use a private redis-server instead (the `private_redis` fixture, RedisServer below): two workers on one
# database would answer each other's pings and take each other's tasks.
TEST_REDIS = f"redis://127.0.0.1:6379/{1 + zlib.crc32(str(PROJECT_ROOT).encode()) % 14}"


def guarded_pythonpath() -> str:
    """PYTHONPATH for a test subprocess: the network guard's folder first (see tests/netguard), then the project."""
    return os.pathsep.join((str(PROJECT_ROOT / "tests" / "netguard"), str(PROJECT_ROOT)))


def worker_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=guarded_pythonpath(), SLUICE_DB_NAME=settings.db_name)
    for name in ("broker_url", "result_backend", "ingest_root", "broker_db_name", "query_timeout_s", "config_path"):
        value = getattr(settings, name)
        env.pop(f"SLUICE_{name.upper()}", None)
        if value is not None:
            env[f"SLUICE_{name.upper()}"] = str(value)
    return env


def start_worker(
    settings: Settings, log: Path, concurrency: int = 1, extra_env: dict[str, str] | None = None
) -> subprocess.Popen:
    """Start `sluice worker` and wait until it has loaded its embedder and answers pings."""
    cmd = [sys.executable, "-m", "cli", "worker", "--concurrency", str(concurrency), "--loglevel", "INFO"]
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


def start_api(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    """Start `sluice serve` on a free loopback port with `env`; wait until /healthz answers: (process, base URL)."""
    port = free_port()
    cmd = [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"API did not start: {log.read_text()[-2000:]}")
        time.sleep(0.2)


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


def wait_job(client: httpx.Client, job_id: str, timeout: float = 120) -> dict:
    """Poll GET /v1/jobs/{id} until it succeeds or fails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/v1/jobs/{job_id}").json()
        if body["status"] in ("succeeded", "failed"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s")
