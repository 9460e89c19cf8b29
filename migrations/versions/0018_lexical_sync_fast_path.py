"""The BM25 postings trigger: nothing to do for an empty transition table, and no statement planned per call.

Every document store runs three statements on `chunks` (tasks/store.py: `replace_chunks`): an INSERT ... ON
CONFLICT DO UPDATE, which fires the insert trigger *and* the update trigger, and a DELETE of chunks past the
new last ordinal, which fires the delete trigger. On a first ingest the update and delete triggers see empty
transition tables, yet each still ran a DELETE ... USING over `lexical_postings` and a dynamically built
(`EXECUTE format(...)`, so re-planned on every call) UPDATE of `lexical_stats`: 6-7 ms per document each,
measured with EXPLAIN ANALYZE on covid_qa documents of 30-36 chunks, against 15-19 ms for the insert
trigger's real work. That doubled the store's cost of BM25 (docs/benchmarks.md, "BM25 and the whole ingest").

Now each branch first checks that its transition table has a row, and the statistics statements are static
SQL, so PL/pgSQL caches their plans for the session. What is written is unchanged: the postings in key order
(0014) and the statistics moved by the difference, upserted in key order (concurrent stores do not deadlock).

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

from alembic import context, op

from sluice.ddl import migration, run_as_owner

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

FUNCTION = r"""
CREATE OR REPLACE FUNCTION lexical_sync() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    -- Nested IFs: a transition table exists only for the events that define it, and PL/pgSQL plans an
    -- expression only when it is reached.
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        IF EXISTS (SELECT FROM old_rows) THEN
            DELETE FROM lexical_postings p
            USING (SELECT r.tenant_id, r.index_id, r.chunk_id, (unnest(r.tsv)).lexeme AS term FROM old_rows r) o
            WHERE p.tenant_id = o.tenant_id AND p.index_id = o.index_id AND p.term = o.term
              AND p.chunk_id = o.chunk_id;
            UPDATE lexical_stats s SET chunks = s.chunks - o.chunks, total_length = s.total_length - o.total_length
            FROM (SELECT r.tenant_id, r.index_id, count(*) AS chunks,
                         coalesce(sum((SELECT sum(cardinality(l.positions)) FROM unnest(r.tsv) l)), 0) AS total_length
                  FROM old_rows r GROUP BY r.tenant_id, r.index_id) o
            WHERE s.tenant_id = o.tenant_id AND s.index_id = o.index_id;
        END IF;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        IF EXISTS (SELECT FROM new_rows) THEN
            INSERT INTO lexical_postings (tenant_id, index_id, term, chunk_id, tf, dl)
            SELECT r.tenant_id, r.index_id, t.term, r.chunk_id, t.tf, t.dl FROM new_rows r, lexical_terms(r.tsv) t
            ORDER BY r.tenant_id, r.index_id, t.term, r.chunk_id;
            INSERT INTO lexical_stats AS s (tenant_id, index_id, chunks, total_length)
            SELECT r.tenant_id, r.index_id, count(*),
                   coalesce(sum((SELECT sum(cardinality(l.positions)) FROM unnest(r.tsv) l)), 0)
            FROM new_rows r GROUP BY r.tenant_id, r.index_id ORDER BY r.tenant_id, r.index_id
            ON CONFLICT (tenant_id, index_id) DO UPDATE
                SET chunks = s.chunks + EXCLUDED.chunks, total_length = s.total_length + EXCLUDED.total_length;
        END IF;
    END IF;
    RETURN NULL;
END
$fn$;
"""


def _previous() -> str:
    """0014's function, restored by downgrade (read from that migration, so there is one copy of it)."""
    return migration("0014").SORTED_POSTINGS


def upgrade() -> None:
    run_as_owner(context, op, FUNCTION)


def downgrade() -> None:
    run_as_owner(context, op, _previous())
