"""The shard ledger on a real Postgres: fencing of a replaced attempt, settled documents skipped, counts, RLS."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice.errors import SluiceError
from tasks.ingest import Settled, SourceFile
from tasks.shards import (
    Ledger,
    ShardAlreadyDone,
    ShardSuperseded,
    new_run_id,
    read_shard,
    run_state,
    split,
    write_shards,
)

FILES = [SourceFile(Path(f"/src/d{i}.txt"), f"d{i}.txt") for i in range(5)]


def _run(db, tenant: str) -> str:
    run_id = new_run_id()
    with db.tenant(tenant) as conn:
        write_shards(conn, run_id, split(FILES, 2))
    return run_id


def _attempt(db, tenant: str, run_id: str, number: int, worker: str) -> tuple[Ledger, set[str]]:
    with db.tenant(tenant) as conn:
        ledger = Ledger(read_shard(conn, run_id, number), worker)
        return ledger, ledger.claim(conn)


def test_split_keeps_order_and_refuses_empty_shards():
    assert [[f.source_id for f in s] for s in split(FILES, 2)] == [
        ["d0.txt", "d1.txt"],
        ["d2.txt", "d3.txt"],
        ["d4.txt"],
    ]
    with pytest.raises(ValueError, match="at least 1"):
        split(FILES, 0)


def test_a_replaced_attempt_can_no_longer_settle_and_the_new_one_skips_what_was_settled(db, new_tenant):
    tenant = new_tenant("shard")
    run_id = _run(db, tenant)
    old, settled = _attempt(db, tenant, run_id, 0, "host-a:1")
    assert settled == set() and old.attempt == 1
    with db.tenant(tenant) as conn:
        old.settle(conn, Settled("d0.txt", "ingested", chunks=3))

    new, settled = _attempt(db, tenant, run_id, 0, "host-b:2")  # the shard redelivered elsewhere
    assert settled == {"d0.txt"} and new.attempt == 2
    with pytest.raises(ShardSuperseded, match="shard 0 of run"):
        with db.tenant(tenant) as conn:
            old.settle(conn, Settled("d1.txt", "ingested", chunks=4))
    with db.tenant(tenant) as conn:
        new.settle(conn, Settled("d1.txt", "failed", error="d1.txt: parse failed: not a PDF"))
        new.finish(conn, "idx", embedded=4)
    with pytest.raises(ShardSuperseded):
        with db.tenant(tenant) as conn:
            old.finish(conn, "idx", embedded=9)

    with db.tenant(tenant) as conn:
        state = run_state(conn, run_id)
    assert (state.shards, state.done, state.finished) == (3, 1, False)
    summary = state.summary
    assert (summary.ingested, summary.failed, summary.chunks, summary.embedded) == (1, 1, 3, 4)
    assert [(e.source_id, e.stage, e.reason) for e in summary.errors] == [("d1.txt", "parse", "not a PDF")]


def test_a_redelivered_message_of_a_done_shard_leaves_it_done(db, new_tenant):
    tenant = new_tenant("shard")
    run_id = _run(db, tenant)
    ledger, _ = _attempt(db, tenant, run_id, 2, "host-a:1")
    with db.tenant(tenant) as conn:
        ledger.settle(conn, Settled("d4.txt", "ingested", chunks=2))
        ledger.finish(conn, "idx", embedded=2)
    # acks_late: the message comes back after the shard finished (its worker died before the ack)
    with pytest.raises(ShardAlreadyDone, match="shard 2 of run .* is already done"):
        _attempt(db, tenant, run_id, 2, "host-b:2")
    with db.tenant(tenant) as conn:
        row = conn.execute(
            "SELECT state, attempt, worker, embedded FROM ingest_shards WHERE run_id = %s AND shard = 2", (run_id,)
        ).fetchone()
    assert row == ("done", 1, "host-a:1", 2)


def test_a_document_is_settled_once_per_run(db, new_tenant):
    tenant = new_tenant("shard")
    run_id = _run(db, tenant)
    ledger, _ = _attempt(db, tenant, run_id, 1, "host-a:1")
    with db.tenant(tenant) as conn:
        ledger.settle(conn, Settled("d2.txt", "ingested", chunks=1))
    with pytest.raises(Exception, match="duplicate key"):
        with db.tenant(tenant) as conn:
            ledger.settle(conn, Settled("d2.txt", "ingested", chunks=1))


def test_another_tenant_sees_no_shard(db, new_tenant):
    owner, other = new_tenant("shard"), new_tenant("other")
    run_id = _run(db, owner)
    with pytest.raises(SluiceError, match="no shard 0 of ingest run"):
        with db.tenant(other) as conn:
            read_shard(conn, run_id, 0)
    with db.tenant(other) as conn:
        assert run_state(conn, run_id).shards == 0
