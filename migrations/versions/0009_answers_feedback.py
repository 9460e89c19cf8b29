"""Answers' records and users' feedback on them.

`answers`: one row per answer a worker produced (its id is in every response: sync, job result, SSE
`done`): question, filters, collection, config, index, citations (document, span) and text. A cache hit
hands out the cached answer's id, so the cached row is the record of every answer served from it.
`feedback`: a rating (up/down) of an answer, an optional correction, optionally the document/span
that should have been cited. Both are tenant data under the tenant policy; `sluice feedback export`
turns them into a gold set.

Retention: an answer expires with its job (SLUICE_JOB_RETENTION_S after it was made; the same worker
sweep calls `expire_answers`), unless it was rated (`rated`, set with its first feedback: feedback is
the gold set's source and is kept until the tenant is deleted). A cache entry names its answer
(`answer_cache.answer_id`, ON DELETE CASCADE): an expired answer takes its cache entry with it, so a cache
hit never hands out an id without a record (the question is answered afresh once a retention period).
As `expire_jobs`, the function runs as the owner, which may see and delete unrated answers (and nothing
else) under FORCE ROW LEVEL SECURITY. The cache is emptied: entries made before this revision name no answer.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from alembic import context, op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

SCHEMA = """
CREATE TABLE answers (
    tenant_id   text NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE CHECK (tenant_id <> ''),
    answer_id   text NOT NULL CHECK (length(answer_id) BETWEEN 1 AND 64),
    job_id      text CHECK (length(job_id) <= 255),
    question    text NOT NULL,
    filters     jsonb,
    collection  text,
    config_id   text NOT NULL,
    index_id    text NOT NULL,
    -- [{"document": source id, "document_id": public id, "span": [start, end]}], in citation order.
    citations   jsonb NOT NULL CHECK (jsonb_typeof(citations) = 'array'),
    answer      text NOT NULL,
    rated       boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, answer_id)
);
CREATE INDEX answers_unrated ON answers (created_at) WHERE NOT rated;
ALTER TABLE answers ENABLE ROW LEVEL SECURITY;
ALTER TABLE answers FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON answers
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));

CREATE TABLE feedback (
    tenant_id    text NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE CHECK (tenant_id <> ''),
    feedback_id  text NOT NULL CHECK (length(feedback_id) BETWEEN 1 AND 64),
    answer_id    text NOT NULL,
    rating       text NOT NULL CHECK (rating IN ('up', 'down')),
    correction   text CHECK (length(correction) BETWEEN 1 AND 20000),
    document     text CHECK (length(document) BETWEEN 1 AND 1000),
    span_start   integer,
    span_end     integer,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, feedback_id),
    -- NO ACTION, not CASCADE: a sweep racing a new rating fails (and retries) rather than deleting it.
    FOREIGN KEY (tenant_id, answer_id) REFERENCES answers (tenant_id, answer_id),
    CHECK ((span_start IS NULL) = (span_end IS NULL)),
    CHECK (span_start IS NULL OR (document IS NOT NULL AND 0 <= span_start AND span_start < span_end))
);
CREATE INDEX feedback_answer ON feedback (tenant_id, answer_id);
ALTER TABLE feedback ENABLE ROW LEVEL SECURITY;
ALTER TABLE feedback FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON feedback
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));

TRUNCATE answer_cache;
ALTER TABLE answer_cache ADD COLUMN answer_id text NOT NULL;
ALTER TABLE answer_cache ADD FOREIGN KEY (tenant_id, answer_id) REFERENCES answers (tenant_id, answer_id)
    ON DELETE CASCADE;
CREATE INDEX answer_cache_answer ON answer_cache (tenant_id, answer_id);
CREATE POLICY owner_reads_unrated ON answers FOR SELECT TO {owner} USING (NOT rated);
CREATE POLICY owner_expires_unrated ON answers FOR DELETE TO {owner} USING (NOT rated);

CREATE FUNCTION expire_answers(p_retention_s double precision, p_batch integer DEFAULT 10000) RETURNS bigint
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
    WITH gone AS (
        DELETE FROM answers WHERE (tenant_id, answer_id) IN (
            SELECT a.tenant_id, a.answer_id FROM answers a
            WHERE NOT a.rated AND a.created_at < now() - make_interval(secs => greatest(p_retention_s, 1))
            LIMIT greatest(p_batch, 1)
        )
        RETURNING 1
    )
    SELECT count(*) FROM gone
$fn$;
"""


def upgrade() -> None:
    owner = context.config.attributes["owner_role"]
    app = context.config.attributes["app_role"]
    op.execute(f'SET LOCAL ROLE "{owner}"')
    op.execute(SCHEMA.replace("{owner}", f'"{owner}"'))
    fn = "expire_answers(double precision, integer)"
    op.execute(f'REVOKE ALL ON FUNCTION {fn} FROM PUBLIC; GRANT EXECUTE ON FUNCTION {fn} TO "{app}";')
    op.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON answers TO "{app}"')
    op.execute(f'GRANT SELECT, INSERT ON feedback TO "{app}"')
    op.execute("RESET ROLE")


def downgrade() -> None:
    owner = context.config.attributes["owner_role"]
    op.execute(f'SET LOCAL ROLE "{owner}"')
    op.execute(
        "DROP FUNCTION IF EXISTS expire_answers(double precision, integer);"
        "ALTER TABLE answer_cache DROP COLUMN IF EXISTS answer_id;"
        "DROP TABLE IF EXISTS feedback, answers;"
    )
    op.execute("RESET ROLE")
