"""Chunk vectors stored in the row, not in the TOAST table.

pgvector's `vector` type defaults to EXTERNAL storage: when a chunks row passes PostgreSQL's TOAST threshold
(~2 kB) the vector, its largest value, is the first moved out of line. A 384-d vector is 1,540 bytes, so a
row with its text and tsvector nearly always passed the threshold: every row kept its vector in
`pg_toast`, and every read of a vector outside the HNSW graph (the exact scan behind a filtered search,
the exact baseline, a graph build) paid a TOAST index probe and a second heap page per row. Measured on
50,000 synthetic chunks, the exact distances over the 10,000 a filter matched: 61,046 shared buffers read
with the vector out of line against 31,018 with it in the row, 1.5-2x faster (docs/benchmarks.md,
"Filtered search at a million chunks").

MAIN keeps a value in the row as long as the row can be made small enough by moving *other* values out
(the text and tsvector, which are read only for the k rows returned, and compressed first); a vector too
large for any row (over ~2 kB, i.e. past ~500 dimensions) still goes out of line, as before. Applies to
rows written from now on; rows already stored keep their layout until they are rewritten (re-ingested, or
`VACUUM FULL chunks`, which re-toasts every row by the column's new storage).

Revision ID: 0019
Revises: 0018
"""

from __future__ import annotations

from alembic import context, op

from sluice.ddl import run_as_owner

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_as_owner(context, op, "ALTER TABLE chunks ALTER COLUMN embedding SET STORAGE MAIN")


def downgrade() -> None:
    run_as_owner(context, op, "ALTER TABLE chunks ALTER COLUMN embedding SET STORAGE EXTERNAL")
