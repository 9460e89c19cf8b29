"""Answers' records expire with the jobs' retention unless rated; an expired answer takes its cache entry along."""

from __future__ import annotations

import psycopg
import pytest

from serving.answers import answer_id_for, store_answer
from serving.cache import cache_put
from serving.feedback import UnknownAnswerError, record_feedback
from serving.jobs import expire
from sluice.db import app_conninfo


def test_unrated_answers_expire_with_their_cache_entries_and_rated_ones_stay(db, migrated, new_tenant):
    tenant, other = new_tenant("exp"), new_tenant("exp")
    ids = {name: answer_id_for(None) for name in ("old", "old_rated", "fresh")}
    with db.tenant(tenant) as conn:
        for name, answer_id in ids.items():
            response = {"answer_id": answer_id, "answer": name, "citations": [], "config_id": "c", "index_id": "i"}
            store_answer(conn, tenant, None, {"question": f"q {name}"}, response)
            cache_put(conn, tenant, f"key-{name}", response)
        conn.execute(
            "UPDATE answers SET created_at = now() - interval '2 hours' WHERE answer_id <> %s", (ids["fresh"],)
        )
    record_feedback(db, tenant, ids["old_rated"], "down", "a correction")
    with psycopg.connect(app_conninfo(migrated), autocommit=True) as conn:  # as the workers' sweep connects
        expire(conn, 3600)
    with db.tenant(tenant) as conn:
        left = {r[0] for r in conn.execute("SELECT answer_id FROM answers")}
        cached = {r[0] for r in conn.execute("SELECT answer_id FROM answer_cache")}
    assert left == cached == {ids["old_rated"], ids["fresh"]}  # the expired answer took its cache entry along
    with pytest.raises(UnknownAnswerError, match="no such answer"):
        record_feedback(db, other, ids["fresh"], "up")  # another tenant: as unknown, also in the function itself
