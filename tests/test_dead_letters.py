"""Dead-letter rows and error classification against the real database (the worker-level tests, with real
processes, are in tests/reliability/test_hostile_input.py)."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest

from serving.deadletter import MAX_ARGUMENTS, DeadLetter, bounded_arguments, record
from serving.worker import _counted
from sluice.db import app_conninfo
from tests.filter_strategies import nested


def _letter(payload, task_id: str | None = None, reason: str = "poison") -> DeadLetter:
    return DeadLetter(task_id or str(uuid.uuid4()), "sluice.query", reason, "RecursionError: deep", 1, payload)


def _rows(db, tenant: str) -> list[tuple]:
    with db.tenant(tenant) as conn:
        return conn.execute("SELECT task_id, reason, attempts, arguments FROM dead_letters").fetchall()


def test_a_dead_letter_is_stored_under_its_tenant_only(migrated, db, new_tenant):
    a, b = new_tenant("dl"), new_tenant("dl")
    job = str(uuid.uuid4())
    db.execute_as(a, "INSERT INTO jobs (job_id, tenant_id, kind) VALUES (%s, %s, 'query')", (job, a))
    payload = {"tenant": a, "question": "bees?", "filters": None, "api_key": "sk_leak"}
    assert record(migrated, _letter(payload, job))
    assert record(migrated, _letter(payload, job, reason="worker_lost"))  # the same task again: one row
    [(task_id, reason, attempts, arguments)] = _rows(db, a)
    assert (task_id, reason, attempts) == (job, "worker_lost", 2)
    assert arguments == {"tenant": a, "question": "bees?", "filters": None}  # the secret-looking key dropped
    assert _rows(db, b) == []  # another tenant sees nothing
    with db.tenant(a) as conn:
        assert conn.execute("SELECT finished_at IS NOT NULL FROM jobs WHERE job_id = %s", (job,)).fetchone()[0]


def test_a_payload_without_a_tenant_is_counted_not_stored(migrated):
    assert not record(migrated, _letter(["not", "a", "mapping"]))
    assert not record(migrated, _letter({"tenant": 7}))


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        ({"tenant": "t", "filters": nested(900)}, "deeper than 32"),
        ({"tenant": "t", "question": "q" * (MAX_ARGUMENTS + 1)}, "characters of arguments"),
        ({"tenant": "t", "filters": {"doc.x": float("nan")}}, "finite"),
        ({"tenant": "t", "question": "a\x00b"}, "NUL"),
        ("a string", "not a mapping"),
    ],
)
def test_arguments_are_bounded_and_storable(migrated, payload, says):
    stored = bounded_arguments(payload)
    assert says in stored["omitted"], stored
    assert len(json.dumps(stored)) < 2000
    with psycopg.connect(app_conninfo(migrated)) as conn:
        conn.execute("SELECT %s::jsonb", (psycopg.types.json.Jsonb(stored),))  # PostgreSQL takes it


def test_too_many_sql_parameters_is_a_refused_query_not_a_transient_error(migrated):
    """libpq refuses a statement of 65,536+ parameters the same way every time: never retried."""

    def work() -> dict:
        with psycopg.connect(app_conninfo(migrated)) as conn:
            conn.execute("SELECT " + ", ".join(["%s"] * 70_000), [1] * 70_000)
        return {}

    body = _counted("sluice.query", work)
    assert body["error"]["type"] == "QueryError" and "65,535" in body["error"]["message"], body

    def lost() -> dict:
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    with pytest.raises(psycopg.OperationalError):  # a lost connection still propagates to autoretry
        _counted("sluice.query", lost)
