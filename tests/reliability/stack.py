"""Settings for a private API + worker stack (serving_support.serving_stack) apart from every other one.

Each stack gets its own broker key prefix (kombu `global_keyprefix`), so its `query` and `ingest`
queues are its own even on a Redis database shared with other modules' workers: a worker of one
module can never consume another module's messages (the cause of earlier cross-module failures).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import psycopg
import redis

from sluice.settings import Settings
from tests.serving_support import TEST_REDIS, stack_settings


def private_settings(base: Settings, name: str, config_dir: Path, **update: object) -> Settings:
    """`base` with its own broker key prefix and config file; generous limits unless `update` says otherwise."""
    prefix = f"sluice-{name}-{uuid.uuid4().hex[:8]}:"
    limits = {"rate_limit_per_s": 10_000.0, "rate_limit_burst": 10_000.0, "query_timeout_s": 120.0}
    return stack_settings(base, name, config_dir, TEST_REDIS, broker_key_prefix=prefix, **{**limits, **update})


def drop_keys(settings: Settings) -> None:
    """Delete this stack's broker keys (only its prefix: other modules' queues are left alone)."""
    client = redis.Redis.from_url(settings.broker_url)
    keys = list(client.scan_iter(match=f"{settings.broker_key_prefix}*", count=1000))
    if keys:
        client.delete(*keys)


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
    raise AssertionError(f"no session of {role} became blocked on a lock in {timeout:.0f} s")
