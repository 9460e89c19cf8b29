"""Champion history: which pipeline config serving uses, every promotion and rollback.

Shared, not tenant data: a config id names the same pipeline everywhere, the MLflow alias
`champion` is one per registered model, and serving reads one champion for every tenant. The
tenant whose gold set decided a promotion is recorded as provenance (`evaluated_on`), not as an
owner. Rows are append-only for the app role: the current champion is the latest row.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import context, op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SCHEMA = """
CREATE TABLE champion_history (
    event_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    config_id      text NOT NULL REFERENCES pipeline_configs (config_id),
    action         text NOT NULL CHECK (action IN ('promote', 'rollback')),
    mlflow_run_id  text,
    model_version  text,
    evaluated_on   text,
    reason         text NOT NULL DEFAULT '',
    metrics        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX champion_history_latest ON champion_history (event_id DESC);
"""


def upgrade() -> None:
    owner = context.config.attributes["owner_role"]
    app = context.config.attributes["app_role"]
    op.execute(f'SET LOCAL ROLE "{owner}"')
    op.execute(SCHEMA)
    op.execute(f'GRANT SELECT, INSERT ON champion_history TO "{app}"')
    op.execute(f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO "{app}"')
    op.execute("RESET ROLE")


def downgrade() -> None:
    owner = context.config.attributes["owner_role"]
    op.execute(f'SET LOCAL ROLE "{owner}"')
    op.execute("DROP TABLE IF EXISTS champion_history")
    op.execute("RESET ROLE")
