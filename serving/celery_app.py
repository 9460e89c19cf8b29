"""The Celery app, built from Settings: explicit queues and routes; the API and the worker share it.

Nothing connects at build time except `ensure_broker_database`, which creates the embedded broker's
database on demand (it is a separate database, never the tenant database).
"""

from __future__ import annotations

import psycopg
from celery import Celery
from kombu import Exchange, Queue
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import URL

from serving import pg_transport
from sluice.settings import Settings

QUERY_TASK, INGEST_TASK = "sluice.query", "sluice.ingest"
SHARD_TASK = "sluice.ingest_shard"  # one shard of a distributed ingest run (serving/shards.py)
QUERY_QUEUE, INGEST_QUEUE = "query", "ingest"
ROUTES = {QUERY_TASK: {"queue": QUERY_QUEUE}, INGEST_TASK: {"queue": INGEST_QUEUE}, SHARD_TASK: {"queue": INGEST_QUEUE}}


def _embedded_url(settings: Settings, scheme: str) -> str:
    from sluice.db import admin_conninfo

    parts = conninfo_to_dict(admin_conninfo(settings, dbname=settings.broker_db_name))
    query = {"host": parts["host"]} if str(parts.get("host", "")).startswith("/") else {}
    url = URL.create(
        scheme,
        username=parts.get("user"),
        password=parts.get("password") or None,
        host=None if query else parts.get("host"),
        port=int(parts["port"]) if parts.get("port") and not query else None,
        database=settings.broker_db_name,
        query=query,
    )
    return url.render_as_string(hide_password=False)


def broker_url(settings: Settings) -> str:
    """The broker: SLUICE_BROKER_URL (redis://, amqp://), or the embedded Postgres (kombu's SQLAlchemy transport)."""
    return settings.broker_url or _embedded_url(settings, f"{pg_transport.ALIAS}+postgresql+psycopg")


def result_backend(settings: Settings) -> str:
    """The result backend: SLUICE_RESULT_BACKEND, else Redis for a Redis broker, else Postgres (RabbitMQ too)."""
    if settings.result_backend:
        return settings.result_backend
    if settings.broker_url and settings.broker_url.startswith(("redis://", "rediss://")):
        return settings.broker_url
    return _embedded_url(settings, "db+postgresql+psycopg")


def is_amqp(url: str | None) -> bool:
    """Whether the broker URL names an AMQP broker (RabbitMQ)."""
    return bool(url) and str(url).startswith(("amqp://", "amqps://", "pyamqp://"))


def uses_embedded_broker(settings: Settings) -> bool:
    """True when broker or backend live in the embedded Postgres's broker database."""
    return not settings.broker_url or (not settings.result_backend and not settings.broker_url.startswith("redis"))


def ensure_broker_database(settings: Settings) -> None:
    """Create the broker's own database on the embedded server if it is missing."""
    from sluice.db import admin_conninfo

    if settings.database_url or not uses_embedded_broker(settings):
        return
    with psycopg.connect(admin_conninfo(settings, dbname="postgres"), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (settings.broker_db_name,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(settings.broker_db_name)))


def create_celery(settings: Settings) -> Celery:
    """Build the Celery app for these settings."""
    ensure_broker_database(settings)
    pg_transport.register()
    app = Celery("sluice", broker=broker_url(settings), backend=result_backend(settings), set_as_current=False)
    app.conf.update(
        # Each queue its own exchange and routing key: with Celery's defaults both would bind
        # routing key "query" on one exchange, and an ingest message would land in both queues.
        task_queues=tuple(Queue(q, Exchange(q, type="direct"), routing_key=q) for q in (QUERY_QUEUE, INGEST_QUEUE)),
        task_routes=ROUTES,
        task_default_queue=QUERY_QUEUE,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # A busy worker process is not handed more: fair, least-busy dispatch.
        worker_prefetch_multiplier=1,
        # Lets GET /v1/jobs tell a queued ingest (PENDING) from a running one (STARTED); queries opt out.
        task_track_started=True,
        result_expires=settings.job_retention_s,  # a job's row and its result go together
        result_extended=True,
        broker_connection_retry_on_startup=True,
        # A pool process loads the embedder before it reports up (worker_process_init); Celery's 4 s
        # default killed every replacement of a lost process on a busy host, so none ever came back.
        worker_proc_alive_timeout=120,
        worker_hijack_root_logger=False,
    )
    if is_amqp(app.conf.broker_url):
        # RabbitMQ: the publish returns only once the broker has confirmed the message, which for a
        # persistent message (Celery's default delivery mode) on a durable queue (kombu's default, and
        # every queue above) means written to disk: an enqueue answered 202 survives a broker crash.
        app.conf.broker_transport_options = {"confirm_publish": True}
    if app.conf.broker_url.startswith(("redis://", "rediss://")):
        # An unacked (acks_late) message is redelivered after this long if its worker vanished. Every live
        # worker sweeps for such messages each `unacked_restore_interval` s (throttle 1: every sweep scans).
        timeout = settings.broker_visibility_timeout_s
        app.conf.broker_transport_options = {
            "visibility_timeout": timeout,
            "unacked_restore_interval": max(1, min(10, timeout // 4)),
            "unacked_restore_throttle": 1,
        }
        if settings.broker_key_prefix:
            app.conf.broker_transport_options["global_keyprefix"] = settings.broker_key_prefix
    return app
