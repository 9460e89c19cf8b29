"""The rollout driver and flow on a database of their own: build beside, catch up, switch, resume, cancel, gc."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from sluice.config import PipelineConfig
from sluice.db import Database
from sluice.served import served
from tasks.indexes import collect_garbage
from tasks.rollout import run_rollout, tenants_in_scope
from tasks.rollout_state import request_cancel, tenant_row
from tests.rollout_support import SMALL, index_counts, ingest, private_database, promote, write_docs

DEFAULT = PipelineConfig()


@pytest.fixture(scope="module")
def rs(settings):
    return private_database(settings, "sluice_rollout_test")


@pytest.fixture(scope="module")
def rdb(rs):
    database = Database(rs)
    yield database
    database.close()


@pytest.fixture(autouse=True)
def no_champion(rs):
    """Each test promotes from scratch (promotions are global to this database)."""
    import psycopg

    from sluice.db import admin_conninfo

    with psycopg.connect(admin_conninfo(rs), autocommit=True) as conn:
        conn.execute("TRUNCATE champion_history")


def _tenant(db: Database, name: str) -> str:
    from sluice.db import create_tenant

    create_tenant(db, name)
    return name


def test_rollout_builds_beside_then_switches_each_tenant_smallest_first(rs, rdb, tmp_path):
    big, small_tenant = _tenant(rdb, "r-big"), _tenant(rdb, "r-small")
    assert ingest(rs, rdb, big, write_docs(tmp_path / "big", 6)[0].parent) == DEFAULT.index_id
    assert ingest(rs, rdb, small_tenant, write_docs(tmp_path / "small", 2)[0].parent) == DEFAULT.index_id
    order = tenants_in_scope(rdb, None)
    assert order.index(small_tenant) < order.index(big)
    before = {t: served(rs, rdb, t).version for t in (big, small_tenant)}
    target = promote(rdb, SMALL)
    assert served(rs, rdb, big).index_id == DEFAULT.index_id  # promoted, not yet built: still the old index
    ro = run_rollout(rs, rdb, None, "test")
    for tenant, docs in ((big, 6), (small_tenant, 2)):
        assert ro.outcomes[tenant] == "switched"
        now = served(rs, rdb, tenant)
        assert now.index_id == target.index_id and now.version > before[tenant]  # answer cache invalidated
        built, chunks, expected = index_counts(rdb, tenant, target.index_id)
        assert built == docs and chunks == expected > docs  # every document once, re-chunked smaller
        assert index_counts(rdb, tenant, DEFAULT.index_id)[0] == docs  # the old index is kept for rollback
        row = tenant_row(rdb, tenant, ro.rollout_id)
        assert (row.status, row.docs_done, row.docs_total, row.docs_failed) == ("switched", docs, docs, 0)
        assert row.from_index == DEFAULT.index_id and row.target_index == target.index_id
    # A rerun has nothing left to build and switches nothing again.
    version = served(rs, rdb, big).version
    again = run_rollout(rs, rdb, big, "rerun")
    assert again.outcomes == {big: "switched"} and served(rs, rdb, big).version == version
    # gc drops the index nobody is served any more, never the served one; a retention keeps the one just left.
    assert collect_garbage(rs, rdb, [big], min_age_days=1, dry_run=True) == {big: []}
    assert collect_garbage(rs, rdb, [big], dry_run=True) == {big: [DEFAULT.index_id]}
    collect_garbage(rs, rdb, [big])
    assert index_counts(rdb, big, DEFAULT.index_id)[0] == 0 and index_counts(rdb, big, target.index_id)[0] == 6


def test_rollback_to_a_collected_index_rebuilds_it_from_the_embedding_cache(rs, rdb, tmp_path):
    from sluice import champion
    from tasks.embed import get_embedder

    tenant = _tenant(rdb, "r-back")
    ingest(rs, rdb, tenant, write_docs(tmp_path / "docs", 3)[0].parent)
    target = promote(rdb, SMALL)
    promote(rdb, {"name": "again"})  # the default again: a rollback returns to SMALL
    promote(rdb, SMALL)
    assert run_rollout(rs, rdb, tenant).outcomes == {tenant: "switched"}
    collect_garbage(rs, rdb, [tenant])  # the default index is gone
    assert index_counts(rdb, tenant, DEFAULT.index_id)[0] == 0
    champion.record_rollback(rdb, "test")
    encoded = get_embedder(DEFAULT.embedder, rs.embed_batch_size).encoded
    assert run_rollout(rs, rdb, tenant).outcomes == {tenant: "switched"}
    assert served(rs, rdb, tenant).index_id == DEFAULT.index_id != target.index_id
    assert index_counts(rdb, tenant, DEFAULT.index_id)[0] == 3
    assert get_embedder(DEFAULT.embedder, rs.embed_batch_size).encoded == encoded  # every vector from the cache


def test_a_tenant_scoped_rollout_changes_only_that_tenant(rs, rdb, tmp_path):
    mine, other = _tenant(rdb, "r-mine"), _tenant(rdb, "r-other")
    for tenant in (mine, other):
        ingest(rs, rdb, tenant, write_docs(tmp_path / tenant, 2)[0].parent)
    own = promote(rdb, SMALL, tenant=mine)
    ro = run_rollout(rs, rdb, mine)
    assert ro.outcomes == {mine: "switched"}
    assert served(rs, rdb, mine).index_id == own.index_id
    assert served(rs, rdb, other).index_id == DEFAULT.index_id and index_counts(rdb, other, own.index_id)[0] == 0


def test_a_tenant_large_in_its_served_index_rolls_out_into_a_graph_of_its_own(rs, rdb, tmp_path):
    """Its claim comes before its rows go into the target: none of them enters the graph the others share."""
    big, small_tenant = _tenant(rdb, "r-own-big"), _tenant(rdb, "r-own-small")
    ingest(rs, rdb, big, write_docs(tmp_path / "own-big", 12)[0].parent)
    ingest(rs, rdb, small_tenant, write_docs(tmp_path / "own-small", 1)[0].parent)
    big_rows = index_counts(rdb, big, DEFAULT.index_id)[1]
    settings = rs.model_copy(update={"own_graph_rows": big_rows})  # the big tenant reaches it, the small one not
    body = {"chunker": {"kind": "recursive", "chunk_size": 250, "chunk_overlap": 20}}
    for tenant in (small_tenant, big):  # the small one first: the target's shared graph exists when big rolls
        target = promote(rdb, body, tenant=tenant)
        assert run_rollout(settings, rdb, tenant).outcomes == {tenant: "switched"}
    assert index_counts(rdb, small_tenant, target.index_id)[1] < big_rows  # re-chunked, still under the threshold
    shared = f"chunks_hnsw_{target.index_id}"
    for tenant, own in ((small_tenant, False), (big, True)):
        with rdb.tenant(tenant) as conn:
            flags = conn.execute("SELECT DISTINCT own_graph FROM chunks WHERE index_id = %s", (target.index_id,))
            assert [r[0] for r in flags] == [own]
            graph, built = conn.execute(
                "SELECT index_graph(%(i)s), to_regclass(quote_ident(index_graph(%(i)s))) IS NOT NULL",
                {"i": target.index_id},
            ).fetchone()
            assert built and (graph != shared) == own, graph


def test_cancel_stops_between_batches_and_a_rerun_continues(rs, rdb, tmp_path, monkeypatch):
    tenant = _tenant(rdb, "r-cancel")
    ingest(rs, rdb, tenant, write_docs(tmp_path / "docs", 6)[0].parent)
    target = promote(rdb, SMALL)
    monkeypatch.setattr(rs, "rollout_batch_docs", 2)
    seen = []

    def cancel_after_first_batch(name, done, total, failed):
        seen.append(done)
        if done >= 2:
            request_cancel(rdb)

    ro = run_rollout(rs, rdb, tenant, on_progress=cancel_after_first_batch)
    assert ro.outcomes == {tenant: "cancelled"} and served(rs, rdb, tenant).index_id == DEFAULT.index_id
    assert 2 <= index_counts(rdb, tenant, target.index_id)[0] < 6
    again = run_rollout(rs, rdb, tenant)
    assert again.rollout_id != ro.rollout_id and again.outcomes == {tenant: "switched"}
    built, chunks, expected = index_counts(rdb, tenant, target.index_id)
    assert built == 6 and chunks == expected


def test_a_document_whose_file_is_gone_blocks_a_parser_change_and_is_reported(rs, rdb, tmp_path):
    tenant = _tenant(rdb, "r-gone")
    paths = write_docs(tmp_path / "docs", 3)
    ingest(rs, rdb, tenant, paths[0].parent)
    paths[1].unlink()
    target = promote(rdb, {"parser": {"pdf_strategy": "fast"}})  # another parser: the original bytes are needed
    ro = run_rollout(rs, rdb, tenant)
    assert ro.outcomes == {tenant: "blocked"} and served(rs, rdb, tenant).index_id == DEFAULT.index_id
    row = tenant_row(rdb, tenant, ro.rollout_id)
    assert (row.status, row.docs_done, row.docs_failed) == ("blocked", 2, 1)
    with rdb.tenant(tenant) as conn:
        errors = conn.execute("SELECT source_id, reason FROM ingest_errors WHERE stage = 'rollout'").fetchall()
    assert errors == [(paths[1].name, errors[0][1])] and "is gone" in errors[0][1]
    forced = run_rollout(rs, rdb, tenant, force=True)
    assert forced.outcomes == {tenant: "switched"} and served(rs, rdb, tenant).index_id == target.index_id
    assert index_counts(rdb, tenant, target.index_id)[0] == 2  # the lost one stays on the old index only
    assert index_counts(rdb, tenant, DEFAULT.index_id)[0] == 3


def test_kill_9_mid_tenant_then_rerun_builds_every_document_once(rs, rdb, cli, tmp_path):
    tenant = _tenant(rdb, "r-kill")
    ingest(rs, rdb, tenant, write_docs(tmp_path / "docs", 40)[0].parent)
    target = promote(rdb, SMALL)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "start_new_session": True}
    one_by_one = rs.model_copy(update={"rollout_batch_docs": 1})
    proc = cli.popen("champion", "rollout", "--tenant", tenant, settings=one_by_one, **quiet)
    try:
        killed_at = _kill_when_started(rdb, tenant, proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert 0 < killed_at < 40
    assert served(rs, rdb, tenant).index_id == DEFAULT.index_id  # a half-built index is never served
    ro = run_rollout(rs, rdb, tenant)
    assert ro.outcomes == {tenant: "switched"} and served(rs, rdb, tenant).index_id == target.index_id
    row = tenant_row(rdb, tenant, ro.rollout_id)
    assert row.docs_done == row.docs_total == 40
    built, chunks, expected = index_counts(rdb, tenant, target.index_id)
    assert built == 40 and chunks == expected


def _kill_when_started(db: Database, tenant: str, proc: subprocess.Popen) -> int:
    """kill -9 the rollout process once it has built a few documents; return how many were built then."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the rollout ended before it could be killed"
        with db.tenant(tenant) as conn:
            done = conn.execute(
                "SELECT count(*) FROM indexed_documents WHERE index_id <> %s", (DEFAULT.index_id,)
            ).fetchone()[0]
        if done >= 3:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return done
        time.sleep(0.05)
    raise AssertionError("the rollout built nothing in 300 s")


def test_the_nightly_deployment_ingests_into_the_served_index_after_a_promotion(rs, rdb, tmp_path, monkeypatch):
    import yaml
    from prefect.testing.utilities import prefect_test_harness
    from prefect.utilities.importtools import import_object

    from flows.rollout import rollout
    from sluice.settings import PROJECT_ROOT

    spec = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]
    nightly = next(d for d in spec if d["name"] == "ingest-sample-nightly")
    assert nightly["parameters"]["config_path"] is None  # the served config, not a file's
    flow_fn = import_object(nightly["entrypoint"])
    tenant = _tenant(rdb, "r-nightly")
    params = {**nightly["parameters"], "source": str(tmp_path / "docs"), "tenant": tenant}
    write_docs(tmp_path / "docs", 3)
    monkeypatch.setenv("SLUICE_DB_NAME", rs.db_name)
    with prefect_test_harness(server_startup_timeout=120):
        assert flow_fn(**params, return_state=True).result()["index_id"] == DEFAULT.index_id
        target = promote(rdb, SMALL)
        rolled = rollout(tenant=tenant, reason="test", return_state=True)
        assert rolled.is_completed() and rolled.result()["tenants"] == {tenant: "switched"}, rolled.message
        write_docs(tmp_path / "docs", 1, first=3)  # a new note for tonight's run
        tonight = flow_fn(**params, return_state=True).result()
    assert tonight["index_id"] == target.index_id and (tonight["ingested"], tonight["unchanged"]) == (1, 3)
    assert index_counts(rdb, tenant, target.index_id)[0] == 4
    assert index_counts(rdb, tenant, DEFAULT.index_id)[0] == 3  # the old index got nothing new


def test_status_cancel_and_gc_commands(rs, rdb, cli, tmp_path):
    def run(*args: str):
        return cli(*args, settings=rs)

    tenant = _tenant(rdb, "r-cli")
    ingest(rs, rdb, tenant, write_docs(tmp_path / "docs", 2)[0].parent)
    target = promote(rdb, SMALL)
    rolled = run("champion", "rollout", "--tenant", tenant)
    assert rolled.exit_code == 0 and f"tenant {tenant} switched" in rolled.output, rolled.output
    from prometheus_client import REGISTRY

    for state, value in (("done", 2), ("total", 2), ("failed", 0)):
        assert REGISTRY.get_sample_value("sluice_rollout_documents", {"tenant": tenant, "state": state}) == value
    status = run("champion", "status", "--tenant", tenant)
    assert status.exit_code == 0, status.output
    line = next(row for row in status.output.splitlines() if row.startswith(f"{tenant}:"))
    assert target.index_id in status.output and "switched" in line and "2/2" in line
    assert "no running rollout" in run("champion", "cancel").output
    dry = run("index", "gc", "--tenant", tenant, "--dry-run")
    assert dry.exit_code == 0 and f"would drop {DEFAULT.index_id}" in dry.output
    assert index_counts(rdb, tenant, DEFAULT.index_id)[0] == 2


def test_an_ingestion_that_a_switch_overtakes_is_repeated_for_the_new_index(rs, rdb, tmp_path):
    from sluice.served import pin
    from tasks.embed import get_embedder
    from tasks.indexes import switch_served
    from tasks.ingest import ingest_source
    from tasks.ingest_served import ingest_served
    from tasks.store import register_index

    tenant = _tenant(rdb, "r-straggler")
    folder = write_docs(tmp_path / "docs", 2)[0].parent
    target = promote(rdb, SMALL)
    seen = []

    def once(config, embedder):
        seen.append(config.index_id)
        summary = ingest_source(rdb, tenant, config, embedder, folder, rs.max_file_bytes)
        if len(seen) == 1:  # a rollout's switch commits after this run's documents were stored in the old index
            with rdb.tenant(tenant) as conn:
                register_index(conn, target, get_embedder(target.embedder).identity)
                switch_served(conn, target)
        return summary

    with rdb.tenant(tenant) as conn:  # pinned to the default index before the promotion
        register_index(conn, DEFAULT, get_embedder(DEFAULT.embedder).identity)
        pin(conn, DEFAULT)
    run = ingest_served(rs, rdb, tenant, "default", once)
    assert seen == run.indexes == [DEFAULT.index_id, target.index_id]
    assert run.summary.ingested == 2 and index_counts(rdb, tenant, target.index_id)[0] == 2


def test_one_tenants_failure_does_not_stop_the_others(rs, rdb, tmp_path):
    broken, fine = _tenant(rdb, "r-broken"), _tenant(rdb, "r-fine")
    for tenant in (broken, fine):
        ingest(rs, rdb, tenant, write_docs(tmp_path / tenant, 2)[0].parent)
    target = promote(rdb, SMALL)
    promote(rdb, {"embedder": {"model": str(tmp_path / "no-such-model")}}, tenant=broken)
    ro = run_rollout(rs, rdb, None, "test")
    assert ro.outcomes[broken] == "failed" and ro.outcomes[fine] == "switched"
    assert "no-such-model" in tenant_row(rdb, broken, ro.rollout_id).error
    assert served(rs, rdb, broken).index_id == DEFAULT.index_id and served(rs, rdb, fine).index_id == target.index_id
