"""Helpers for serving tests: a real Celery worker subprocess and a real uvicorn server in a thread."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import uvicorn

from serving.api import create_app
from sluice.settings import PROJECT_ROOT, Settings

# A Redis database of its own (1-14, by checkout path), so test runs of two checkouts on one machine
# never consume or flush each other's queues (db 15 is the gateway tests', db 0 the default).
TEST_REDIS = f"redis://127.0.0.1:6379/{1 + zlib.crc32(str(PROJECT_ROOT).encode()) % 14}"


def worker_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT), SLUICE_DB_NAME=settings.db_name)
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
    cmd = [sys.executable, "-m", "sluice.cli", "worker", "--concurrency", str(concurrency), "--loglevel", "INFO"]
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ApiServer:
    """create_app(settings) served by uvicorn on a free loopback port, in a thread of this process."""

    def __init__(self, settings: Settings):
        self.port = free_port()
        self.app = create_app(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
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
