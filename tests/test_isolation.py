"""Row-level security: one tenant can never see or touch another's rows, as the app role or the owner."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.types.json import Jsonb

from sluice.db import OWNER_ROLE, Database
from sluice.errors import UnknownTenantError
from tests.conftest import TEST_DB  # noqa: F401  (documents which database these run on)

TENANT_TABLES = (
    "tenants",
    "documents",
    "chunks",
    "indexed_documents",
    "embedding_cache",
    "ingest_errors",
    "active_indexes",
    "idempotency_keys",
    "jobs",
    "answer_cache",
    "corpus_versions",
    "rate_buckets",
    "dead_letters",
    "rollout_tenants",
    "lexical_postings",
    "lexical_stats",
    "answers",
    "feedback",
    "ingest_shards",
    "ingest_run_documents",
    "uploads",
    "upload_parts",
    "tenant_graphs",
)
# Holds only key hashes; the app role has no privilege on it and reaches it through definer functions.
NO_RLS_BY_DESIGN = ("api_keys",)


def _add_document(db: Database, tenant: str, source_id: str = "a.txt") -> int:
    with db.tenant(tenant) as conn:
        return conn.execute(
            "INSERT INTO documents (tenant_id, source_id, content_hash, metadata, text) "
            "VALUES (%s, %s, 'h', %s, 'secret text') RETURNING document_id",
            (tenant, source_id, Jsonb({})),
        ).fetchone()[0]


def test_other_tenant_cannot_read_update_or_delete(db, new_tenant):
    a, b = new_tenant("a"), new_tenant("b")
    doc_id = _add_document(db, a)
    with db.tenant(b) as conn:
        assert conn.execute("SELECT count(*) FROM documents").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM documents WHERE document_id = %s", (doc_id,)).fetchone()[0] == 0
        assert conn.execute("UPDATE documents SET text = 'pwned' WHERE document_id = %s", (doc_id,)).rowcount == 0
        assert conn.execute("DELETE FROM documents WHERE document_id = %s", (doc_id,)).rowcount == 0
        assert conn.execute("SELECT count(*) FROM tenants").fetchone()[0] == 1  # only itself
    with db.tenant(a) as conn:
        assert (
            conn.execute("SELECT text FROM documents WHERE document_id = %s", (doc_id,)).fetchone()[0] == "secret text"
        )


def test_other_tenant_cannot_insert_rows_for_another(db, new_tenant):
    a, b = new_tenant("a"), new_tenant("b")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
        with db.tenant(b) as conn:
            conn.execute(
                "INSERT INTO documents (tenant_id, source_id, content_hash, text) VALUES (%s, 'x', 'h', 't')", (a,)
            )
    doc_id = _add_document(db, b)
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
        with db.tenant(b) as conn:
            conn.execute("UPDATE documents SET tenant_id = %s WHERE document_id = %s", (a, doc_id))


def test_no_tenant_sees_nothing_and_cannot_insert(db, new_tenant):
    _add_document(db, new_tenant())
    with db.shared() as conn:
        for table in TENANT_TABLES:
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0, table  # noqa: S608
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with db.shared() as conn:
            conn.execute("INSERT INTO tenants (tenant_id) VALUES ('sneaky')")


def test_unknown_tenant_is_refused(db):
    with pytest.raises(UnknownTenantError, match="sluice tenant create nobody"):
        with db.tenant("nobody"):
            pass


def test_pooled_connection_is_clean_after_a_tenant_request(migrated, new_tenant):
    single = Database(migrated.model_copy(update={"pool_min_size": 1, "pool_max_size": 1}))
    try:
        a = new_tenant("a")
        _add_document(single, a)
        with single.tenant(a) as conn:
            assert conn.execute("SELECT count(*) FROM documents").fetchone()[0] == 1
            pid = conn.info.backend_pid
        with single.shared() as conn:
            assert conn.info.backend_pid == pid  # the very same server session
            assert (conn.execute("SELECT current_setting('app.tenant_id', true)").fetchone()[0] or "") == ""
            assert conn.execute("SELECT count(*) FROM documents").fetchone()[0] == 0
        # Even a session-level SET (the leak seen with a naive helper) is wiped by the pool's reset.
        with single.pool.connection() as conn:
            conn.execute("SELECT set_config('app.tenant_id', %s, false)", (a,))
            conn.commit()
        with single.shared() as conn:
            assert conn.info.backend_pid == pid
            assert conn.execute("SELECT count(*) FROM documents").fetchone()[0] == 0
    finally:
        single.close()


def test_roles_cannot_bypass_rls(admin, migrated):
    rows = admin.execute(
        "SELECT rolname, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = ANY(%s)",
        ([OWNER_ROLE, migrated.app_role],),
    ).fetchall()
    assert sorted(r[0] for r in rows) == sorted([OWNER_ROLE, migrated.app_role])
    assert all(not r[1] and not r[2] for r in rows)
    owned = admin.execute(
        # Session-local TEMP staging tables aside, the app role owns no relation.
        "SELECT count(*) FROM pg_class WHERE relpersistence <> 't' "
        "AND relowner = (SELECT oid FROM pg_roles WHERE rolname = %s)",
        (migrated.app_role,),
    ).fetchone()[0]
    assert owned == 0, "the application role must own nothing"
    flags = admin.execute(
        "SELECT relname, relrowsecurity, relforcerowsecurity, pg_get_userbyid(relowner) FROM pg_class "
        "WHERE relname = ANY(%s) AND relkind = 'r'",
        (list(TENANT_TABLES),),
    ).fetchall()
    assert len(flags) == len(TENANT_TABLES)
    assert all(r[1] and r[2] and r[3] == OWNER_ROLE for r in flags), flags


def test_table_owner_is_subject_to_rls(admin, db, new_tenant):
    a = new_tenant("a")
    _add_document(db, a)
    with admin.transaction():
        admin.execute(f'SET LOCAL ROLE "{OWNER_ROLE}"')
        assert admin.execute("SELECT count(*) FROM documents").fetchone()[0] == 0
        admin.execute("SELECT set_config('app.tenant_id', %s, true)", (a,))
        assert admin.execute("SELECT count(*) FROM documents").fetchone()[0] == 1


def test_empty_tenant_id_is_rejected_by_the_schema(db):
    with pytest.raises(psycopg.errors.CheckViolation):
        with db.tenant("", check=False) as conn:
            conn.execute("INSERT INTO tenants (tenant_id) VALUES ('')")


def test_every_table_with_a_tenant_column_is_covered(admin, migrated):
    tables = {
        r[0]
        for r in admin.execute(
            "SELECT table_name FROM information_schema.columns WHERE table_schema = 'public' "
            "AND column_name = 'tenant_id'"
        )
    }
    assert tables == set(TENANT_TABLES) | set(NO_RLS_BY_DESIGN)
    privileges = admin.execute(
        "SELECT count(*) FROM information_schema.role_table_grants WHERE table_name = 'api_keys' AND grantee = %s",
        (migrated.app_role,),
    ).fetchone()[0]
    assert privileges == 0
