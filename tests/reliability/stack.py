"""A private API + worker stack for one test module (or benchmark), isolated from every other one.

Each stack gets its own broker key prefix (kombu `global_keyprefix`), so its `query` and `ingest`
queues are its own even on a Redis database shared with other modules' workers: a worker of one
module can never consume another module's messages (the cause of earlier cross-module failures).
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
import redis

from sluice.settings import Settings
from tests.serving_support import TEST_REDIS, free_port, start_worker, stop_worker, worker_env

# API-side settings a `sluice serve` subprocess must see (the worker's come from worker_env).
API_FIELDS = (
    "queue_limit",
    "ingest_queue_limit",
    "rate_limit_per_s",
    "rate_limit_burst",
    "answer_cache",
    "max_upload_bytes",
    "broker_key_prefix",
    "log_level",
    "header_timeout_s",
    "body_timeout_s",
    "tenant_concurrency",
)


def private_settings(base: Settings, name: str, config_dir: Path, **update: object) -> Settings:
    """`base` with its own broker key prefix and config file; generous limits unless `update` says otherwise."""
    config = config_dir / "pipeline.yaml"
    config.write_text(f"name: {name}\n")
    prefix = f"sluice-{name}-{uuid.uuid4().hex[:8]}:"
    defaults = {"rate_limit_per_s": 10_000.0, "rate_limit_burst": 10_000.0, "query_timeout_s": 120.0}
    fields = {"broker_url": TEST_REDIS, "broker_key_prefix": prefix, "config_path": config, **defaults, **update}
    return base.model_copy(update=fields)


def stack_env(settings: Settings) -> dict[str, str]:
    """Environment for a worker or API subprocess running with `settings`."""
    env = worker_env(settings)
    for name in API_FIELDS:
        env[f"SLUICE_{name.upper()}"] = str(getattr(settings, name))
    return env


def drop_keys(settings: Settings) -> None:
    """Delete this stack's broker keys (only its prefix: other modules' queues are left alone)."""
    client = redis.Redis.from_url(settings.broker_url)
    keys = list(client.scan_iter(match=f"{settings.broker_key_prefix}*", count=1000))
    if keys:
        client.delete(*keys)


@contextmanager
def worker_process(settings: Settings, log: Path, concurrency: int) -> Iterator[subprocess.Popen]:
    """A `sluice worker` on this stack's queues, warm on return, stopped on exit."""
    proc = start_worker(settings, log, concurrency=concurrency, extra_env=stack_env(settings))
    try:
        yield proc
    finally:
        stop_worker(proc)


@contextmanager
def api_process(settings: Settings, log: Path) -> Iterator[str]:
    """`sluice serve` as a subprocess (its own GIL, as deployed) on a free port; yields its base URL."""
    with api_subprocess(settings, log) as (url, _):
        yield url


@contextmanager
def api_subprocess(settings: Settings, log: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """As `api_process`, yielding the process too (its pid, for memory readings)."""
    port = free_port()
    cmd = [sys.executable, "-m", "cli", "serve", "--port", str(port)]
    proc = subprocess.Popen(
        cmd, env=stack_env(settings), stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(proc, url, log)
        yield url, proc
    finally:
        stop_worker(proc)  # any process group: SIGTERM, then SIGKILL after a grace period


def wait_up(proc: subprocess.Popen, url: str, log: Path) -> None:
    """Wait until the server of `proc` answers /healthz at `url` (its log in the error if it exits or hangs)."""
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


def metric(text: str, name: str, labels: str = "") -> float | None:
    """One sample of a Prometheus exposition text, e.g. metric(body, "sluice_queue_depth", 'queue="ingest"')."""
    want = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def blocked_on_lock(conninfo: str, role: str, timeout: float = 60) -> None:
    """Wait until a session of the application role waits for a lock: the task is inside its database work."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(conninfo, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND wait_event_type = 'Lock'", (role,)
            ).fetchone()
            if row[0]:
                return
            time.sleep(0.1)
    raise AssertionError("no application session became blocked on the chunks lock")
