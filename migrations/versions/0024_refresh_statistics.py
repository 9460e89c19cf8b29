"""A bulk load commits the planner's statistics of its rows with its graph (`refresh_statistics`).

A search asks the planner how many chunks a filter matches (tasks/retrieve.py, `estimated_rows`) and answers
a filter estimated under PREFILTER_ROWS with an exact scan of its matches; BM25's joins are planned from the
same statistics. Right after a bulk load they do not know the new rows: a table never analyzed estimates 1
row for any filter, so a filter matching 60% of a 100k-row tenant was answered by an exact scan of 60,000
rows (docs/benchmarks.md, "Statistics after a bulk load") until autovacuum's next analyze, which comes on
its own schedule and only once the changes since the last one pass a tenth of the table.

`refresh_statistics(loaded)` runs ANALYZE on `chunks`, `documents` and `lexical_postings` when `chunks` was
never analyzed (by anyone: `reltuples` does not tell, the graph build sets it), or when the rows its caller
loaded plus the changes counted since the last analyze reach 1,000 and 1% of the table. The caller says what
it loaded because the cumulative counters lag: a backend reports a committed transaction's changes up to a
second later, or once it is idle, so a load's own rows may not be counted yet. ANALYZE samples rows the
calling transaction inserted as live, and its pg_statistic rows commit with the transaction. The function runs
as the owner (ANALYZE needs it; the app role owns nothing). The bulk path calls it in the graph build's
transaction (tasks.bulk.build_vector_index), with the same bounded wait for its lock on the table.

Revision ID: 0024
Revises: 0023
"""

from __future__ import annotations

from alembic import context, op

from sluice.ddl import run_as_owner

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None

FUNCTION = """
CREATE OR REPLACE FUNCTION refresh_statistics(loaded bigint) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
DECLARE
    t text;
BEGIN
    IF NOT (SELECT coalesce(s.last_analyze, s.last_autoanalyze) IS NULL
                   OR greatest(loaded, 0) + coalesce(s.n_mod_since_analyze, 0)
                      + coalesce(x.n_tup_ins + x.n_tup_upd + x.n_tup_del, 0) >= greatest(1000, 0.01 * c.reltuples)
            FROM pg_class c
            LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
            LEFT JOIN pg_stat_xact_user_tables x ON x.relid = c.oid
            WHERE c.oid = 'chunks'::regclass) THEN
        RETURN false;
    END IF;
    FOREACH t IN ARRAY ARRAY['chunks', 'documents', 'lexical_postings'] LOOP
        EXECUTE format('ANALYZE %I', t);
    END LOOP;
    RETURN true;
END
$fn$;
REVOKE ALL ON FUNCTION refresh_statistics(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION refresh_statistics(bigint) TO {app};
"""


def upgrade() -> None:
    run_as_owner(context, op, FUNCTION)


def downgrade() -> None:
    run_as_owner(context, op, "DROP FUNCTION IF EXISTS refresh_statistics(bigint);")
