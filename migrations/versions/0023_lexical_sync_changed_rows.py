"""The BM25 postings trigger re-posts only the updated chunks whose postings change.

0018's trigger re-posted every row of an UPDATE on `chunks`: it deleted the postings of every old row and
inserted those of every new row, and moved the statistics by both. Most updates of a chunk change no text:
a document's promoted metadata passed to its chunks (sluice/filter_columns.py, `documents_carry_promoted`),
and a re-ingested document's chunks whose text is unchanged but whose offsets moved (tasks/store.py,
`replace_chunks`). Each cost ~28 posting deletes and inserts per chunk for postings that stayed the same.

Now an UPDATE's old rows and new rows are compared by chunk id: a pair whose tenant, index and `tsv` are
equal keeps its postings and statistics untouched; the rest are re-posted as before (a row whose chunk id
changed has no pair, so it is re-posted too). INSERT and DELETE are unchanged: the postings in key order
(0014), empty transition tables skipped and static SQL (0018).

Revision ID: 0023
Revises: 0022
"""

from __future__ import annotations

from alembic import context, op

from sluice.ddl import migration, run_as_owner

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None

# The rows of a transition table whose postings go (REMOVE) or come (ADD), as `r`.
_REMOVE = """
            DELETE FROM lexical_postings p
            USING (SELECT r.tenant_id, r.index_id, r.chunk_id, (unnest(r.tsv)).lexeme AS term FROM {rows}) o
            WHERE p.tenant_id = o.tenant_id AND p.index_id = o.index_id AND p.term = o.term
              AND p.chunk_id = o.chunk_id;
            UPDATE lexical_stats s SET chunks = s.chunks - o.chunks, total_length = s.total_length - o.total_length
            FROM (SELECT r.tenant_id, r.index_id, count(*) AS chunks,
                         coalesce(sum((SELECT sum(cardinality(l.positions)) FROM unnest(r.tsv) l)), 0) AS total_length
                  FROM {rows} GROUP BY r.tenant_id, r.index_id) o
            WHERE s.tenant_id = o.tenant_id AND s.index_id = o.index_id;"""
_ADD = """
            INSERT INTO lexical_postings (tenant_id, index_id, term, chunk_id, tf, dl)
            SELECT r.tenant_id, r.index_id, t.term, r.chunk_id, t.tf, t.dl FROM {rows}, lexical_terms(r.tsv) t
            ORDER BY r.tenant_id, r.index_id, t.term, r.chunk_id;
            INSERT INTO lexical_stats AS s (tenant_id, index_id, chunks, total_length)
            SELECT r.tenant_id, r.index_id, count(*),
                   coalesce(sum((SELECT sum(cardinality(l.positions)) FROM unnest(r.tsv) l)), 0)
            FROM {rows} GROUP BY r.tenant_id, r.index_id ORDER BY r.tenant_id, r.index_id
            ON CONFLICT (tenant_id, index_id) DO UPDATE
                SET chunks = s.chunks + EXCLUDED.chunks, total_length = s.total_length + EXCLUDED.total_length;"""
# An UPDATE's rows without a partner of the same chunk id, tenant, index and tsv in the other table, as `r`.
_CHANGED = (
    "(SELECT t.* FROM {this} t WHERE NOT EXISTS (SELECT FROM {other} x WHERE x.chunk_id = t.chunk_id "
    "AND x.tenant_id = t.tenant_id AND x.index_id = t.index_id AND x.tsv = t.tsv)) r"
)
CHANGED_OLD = _CHANGED.format(this="old_rows", other="new_rows")
CHANGED_NEW = _CHANGED.format(this="new_rows", other="old_rows")

FUNCTION = f"""
CREATE OR REPLACE FUNCTION lexical_sync() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    -- A transition table exists only for the events that define it, and PL/pgSQL plans a statement only
    -- when it is reached: each event has its own branch.
    IF TG_OP = 'INSERT' THEN
        IF EXISTS (SELECT FROM new_rows) THEN{_ADD.format(rows="new_rows r")}
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        IF EXISTS (SELECT FROM old_rows) THEN{_REMOVE.format(rows="old_rows r")}
        END IF;
    ELSE  -- UPDATE: only the rows whose postings change
        IF EXISTS (SELECT FROM {CHANGED_OLD}) THEN{_REMOVE.format(rows=CHANGED_OLD)}
        END IF;
        IF EXISTS (SELECT FROM {CHANGED_NEW}) THEN{_ADD.format(rows=CHANGED_NEW)}
        END IF;
    END IF;
    RETURN NULL;
END
$fn$;
"""  # noqa: S608 (constants only)


def upgrade() -> None:
    run_as_owner(context, op, FUNCTION)


def downgrade() -> None:
    run_as_owner(context, op, migration("0018").FUNCTION)  # 0018's function, read from that migration
