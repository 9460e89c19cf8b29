"""One answer to "which config?": pinning, promotion scope, experiments, the CLI and the Prefect ingest flow."""

from __future__ import annotations

import json

import pytest

from sluice import champion
from sluice.config import PipelineConfig
from sluice.served import served
from tests.rollout_support import SMALL, promote
from tests.rollout_support import ingest as ingest_into_served


@pytest.fixture(autouse=True)
def no_champion(migrated):
    """Each test starts and ends without a champion (the champion is global to the test database)."""
    import psycopg

    from sluice.db import admin_conninfo

    def truncate() -> None:
        with psycopg.connect(admin_conninfo(migrated), autocommit=True) as conn:
            conn.execute("TRUNCATE champion_history")

    truncate()
    yield
    truncate()


BEES = "# Bees\n\nHoneybees communicate the location of flowers to their hive mates with a waggle dance.\n"


def test_a_promotion_changing_the_index_leaves_pinned_tenants_where_they_are(migrated, db, new_tenant, tmp_path):
    (tmp_path / "bees.md").write_text(BEES)
    pinned, fresh = new_tenant("pinned"), new_tenant("fresh")
    default = PipelineConfig()
    assert ingest_into_served(migrated, db, pinned, tmp_path) == default.index_id
    small = promote(db, SMALL)
    now = served(migrated, db, pinned)
    assert (now.index_id, now.target.index_id) == (default.index_id, small.index_id) and now.pinned and now.pending
    assert now.key_config_id == small.config_id  # what the API puts in cache keys
    assert served(migrated, db, fresh).index_id == small.index_id  # nothing stored: follows its target at once
    # The same index with another generator: nothing to build, so it applies to the pinned tenant at once.
    terse = promote(db, {"generator": {"kind": "extractive", "max_sentences": 1}})
    assert terse.index_id == default.index_id
    assert served(migrated, db, pinned).config.config_id == terse.config_id


def test_a_tenant_champion_overrides_the_global_one_for_that_tenant_only(migrated, db, new_tenant):
    mine, other = new_tenant("mine"), new_tenant("other")
    small = promote(db, SMALL)
    own = promote(db, {"chunker": {"kind": "sentence", "window": 3, "overlap": 1}}, tenant=mine)
    assert served(migrated, db, mine).target.config_id == own.config_id
    assert served(migrated, db, other).target.config_id == small.config_id
    assert champion.current_champion_id(db) == small.config_id
    assert champion.current_champion_id(db, mine) == own.config_id
    # Rolling back the tenant's only promotion hands it back to the global champion; the global one stays.
    assert champion.record_rollback(db, "test", tenant=mine) is None
    assert served(migrated, db, mine).target.config_id == small.config_id
    with pytest.raises(Exception, match="nothing to roll back to globally"):
        champion.record_rollback(db, "test")


def test_a_tenant_scoped_promotion_bumps_that_tenants_corpus_version_only(migrated, db, new_tenant):
    mine, other = new_tenant("bump"), new_tenant("nobump")
    before = {t: served(migrated, db, t).version for t in (mine, other)}
    promote(db, SMALL, tenant=mine)
    assert served(migrated, db, mine).version == before[mine] + 1
    assert served(migrated, db, other).version == before[other]


def test_cli_ingest_and_query_use_the_served_index_and_say_when_config_is_an_experiment(cli, migrated, db, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "bees.md").write_text(BEES)
    assert cli("tenant", "create", "served-cli").exit_code == 0
    assert cli("ingest", str(docs), "--tenant", "served-cli").exit_code == 0
    small = promote(db, SMALL)  # a new champion with another index: not built for this tenant yet
    result = cli("ingest", str(docs), "--tenant", "served-cli")
    assert result.exit_code == 0 and f"into index {PipelineConfig().index_id}" in result.output, result.output
    answer = cli("query", "How do bees tell each other where flowers are?", "--tenant", "served-cli", "--json")
    body = json.loads(answer.stdout)
    assert body["index_id"] == PipelineConfig().index_id and body["citations"][0]["document"] == "bees.md"
    config = tmp_path / "small.yaml"
    config.write_text(json.dumps(SMALL))
    result = cli("ingest", str(docs), "--tenant", "served-cli", "--config", str(config))
    assert result.exit_code == 0, result.output
    assert f"index {small.index_id} ({config}) was built for experiments" in result.output
    assert "served only after a rollout" in result.output
    experiment = cli("query", "How do bees dance?", "--tenant", "served-cli", "--config", str(config), "--json")
    assert experiment.exit_code == 0 and f"experiment: answering from index {small.index_id}" in experiment.output
    # Activating it by hand is a switch like a rollout's: served at once, the tenant's answer cache invalidated.
    version = served(migrated, db, "served-cli").version
    assert cli("index", "activate", small.index_id, "--tenant", "served-cli").exit_code == 0
    now = served(migrated, db, "served-cli")
    assert now.index_id == small.index_id and now.version > version
    answer = cli("query", "How do bees tell each other where flowers are?", "--tenant", "served-cli", "--json")
    assert json.loads(answer.stdout)["index_id"] == small.index_id


def test_a_tenant_stored_without_a_row_is_pinned_before_a_promotion(migrated, db, new_tenant, embedder, tmp_path):
    from sluice.served import pin_unpinned
    from tasks.ingest import ingest_source

    legacy, empty = new_tenant("legacy"), new_tenant("empty")
    (tmp_path / "bees.md").write_text(BEES)
    ingest_source(db, legacy, PipelineConfig(), embedder, tmp_path, 1_000_000)  # no row: as before 0008
    assert not served(migrated, db, legacy).pinned
    assert pin_unpinned(migrated, db, [legacy, empty]) == [legacy]  # promote_run and rollback call this first
    small = promote(db, SMALL)
    assert served(migrated, db, legacy).index_id == PipelineConfig().index_id
    assert served(migrated, db, empty).index_id == small.index_id
