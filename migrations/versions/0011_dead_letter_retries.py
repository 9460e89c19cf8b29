"""Dead letters can be replayed: `sluice jobs retry ID` records the job it sent.

`retries` counts the replays of a dead letter and `retried_as` is the job id of the last one (a uuid5 of
the task id and that count, so a replay that is run twice sends one job). The table is already under
the tenant policy (0006): columns only.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from alembic import context, op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    owner = context.config.attributes["owner_role"]
    op.execute(f'SET LOCAL ROLE "{owner}"')
    op.execute(
        "ALTER TABLE dead_letters"
        " ADD COLUMN retries integer NOT NULL DEFAULT 0 CHECK (retries >= 0),"
        " ADD COLUMN retried_as text CHECK (length(retried_as) BETWEEN 1 AND 255),"
        " ADD COLUMN retried_at timestamptz"
    )
    op.execute("RESET ROLE")


def downgrade() -> None:
    owner = context.config.attributes["owner_role"]
    op.execute(f'SET LOCAL ROLE "{owner}"')
    op.execute(
        "ALTER TABLE dead_letters DROP COLUMN IF EXISTS retried_at, DROP COLUMN IF EXISTS retried_as,"
        " DROP COLUMN IF EXISTS retries"
    )
    op.execute("RESET ROLE")
