"""Promoted metadata keys: a document key copied into a typed column `documents.meta_<key>` with a btree index.

Why: under forced RLS a filter on `d.metadata #> '{key}'` is evaluated row by row after the tenant's
rows are found (jsonb operators are not leakproof), so a 0.1% filter read every row of the tenant. `=`,
`<`, `= ANY` on bigint, text and boolean are leakproof: on a promoted column the filter is an index
condition and the search reads only the matching documents (docs/retrieval.md "Filtered search").

The column is a STORED generated column over `metadata`, so every writer (ingestion, bulk loads,
metadata updates) fills it with no code of its own, and it is NULL wherever the key is absent or holds
another JSON type, which is exactly when a `doc.<key>` condition of that type cannot match. A CHECK keeps
the column equal to the JSON value for every value of the declared type (integers integral and within
bigint, strings short enough for a btree entry), so a promoted filter and its jsonb form agree row for row.

Every chunk carries a copy of the column (`chunks.meta_<key>`, `carry`), kept equal to its document's by
two triggers, and filters compile to the chunk's copy: the key leads a btree on chunks that also holds the
chunks' vectors, so a filtered dense search is one index-only scan over the matching chunks.

Declared in SLUICE_FILTER_COLUMNS ({"year": "integer", "team": "text"}) and applied by `sluice db up`
(migrate) as the owner role; the app role reads the registry (`filter_columns`) and never runs DDL.
"""

from __future__ import annotations

import re

import psycopg
from psycopg import sql

from sluice.errors import ConfigError

TYPES = {"text": "text", "integer": "bigint", "boolean": "boolean"}
MAX_TEXT_BYTES = 1024  # a btree entry holds at most ~2.7 kB; promoted strings stay far below
MAX_INTEGER = 10**18  # |value| < 1e18 fits bigint
KEY = re.compile(r"[a-z][a-z0-9_]{0,39}")
# Keys Sluice sets itself on documents (a user's metadata may not set them, tasks/metadata.py): not promoted.
RESERVED = frozenset({"source", "filename", "filetype", "mojibake_repaired"})

_VALUE = {
    "text": "CASE WHEN jsonb_typeof(metadata->{k}) = 'string' THEN metadata->>{k} END",
    "integer": "CASE WHEN jsonb_typeof(metadata->{k}) = 'number' THEN (metadata->{k})::numeric::bigint END",
    "boolean": "CASE WHEN jsonb_typeof(metadata->{k}) = 'boolean' THEN (metadata->{k})::boolean END",
}
_CHECK = {
    "text": "jsonb_typeof(metadata->{k}) IS DISTINCT FROM 'string' OR octet_length(metadata->>{k}) <= "
    + str(MAX_TEXT_BYTES),
    "integer": "jsonb_typeof(metadata->{k}) IS DISTINCT FROM 'number' OR ((metadata->{k})::numeric = "
    f"trunc((metadata->{{k}})::numeric) AND abs((metadata->{{k}})::numeric) < {MAX_INTEGER})",
    "boolean": "true",
}


def check_declared(columns: dict[str, str]) -> dict[str, str]:
    """Return the declaration, or raise ConfigError naming the key or type that is wrong."""
    for key, kind in columns.items():
        if not isinstance(key, str) or not KEY.fullmatch(key):
            raise ConfigError(
                f"SLUICE_FILTER_COLUMNS key {key!r} is invalid: use 1-40 lowercase ASCII letters, digits or '_', "
                "starting with a letter (a top-level document metadata key)"
            )
        if key in RESERVED:
            raise ConfigError(
                f"SLUICE_FILTER_COLUMNS key {key!r} is set by Sluice itself, not by your metadata: remove it from "
                f"SLUICE_FILTER_COLUMNS (reserved: {sorted(RESERVED)})"
            )
        if kind not in TYPES:
            raise ConfigError(f"SLUICE_FILTER_COLUMNS[{key!r}] = {kind!r}: use one of {sorted(TYPES)}")
    return columns


def column(key: str) -> sql.Identifier:
    """The promoted column of `key`."""
    return sql.Identifier(f"meta_{key}")


def promote(conn: psycopg.Connection, key: str, kind: str) -> None:
    """Add (once) the generated column, its CHECK and its btree index for `key`; run as the table owner."""
    row = conn.execute("SELECT type FROM filter_columns WHERE key = %s", (key,)).fetchone()
    if row is not None:
        if row[0] != kind:
            raise ConfigError(
                f"metadata key {key!r} is promoted as {row[0]}, not {kind}: keep {row[0]} in SLUICE_FILTER_COLUMNS "
                "(changing a promoted type needs a migration)"
            )
        carry(conn, key, kind)  # a key promoted before chunks carried keys gains the chunk side here
        return
    name = sql.Literal(key)
    check = sql.Identifier(f"documents_meta_{key}_check")
    try:
        add_check = "ALTER TABLE documents ADD CONSTRAINT {} CHECK (" + _CHECK[kind] + ")"
        conn.execute(sql.SQL(add_check).format(check, k=name))
    except psycopg.errors.CheckViolation as exc:
        raise ConfigError(
            f"cannot promote metadata key {key!r} as {kind}: stored documents hold values the column cannot "
            f"represent ({'strings over ' + str(MAX_TEXT_BYTES) + ' bytes' if kind == 'text' else 'non-integers'}): "
            "fix their metadata or leave the key unpromoted"
        ) from exc
    add_column = f"ALTER TABLE documents ADD COLUMN {{}} {TYPES[kind]} GENERATED ALWAYS AS ({_VALUE[kind]}) STORED"
    conn.execute(sql.SQL(add_column).format(column(key), k=name))
    index = sql.Identifier(f"documents_meta_{key}")
    conn.execute(sql.SQL("CREATE INDEX {} ON documents (tenant_id, {})").format(index, column(key)))
    conn.execute("INSERT INTO filter_columns (key, type) VALUES (%s, %s)", (key, kind))
    carry(conn, key, kind)


# The widest embedding whose index entry (tenant id <= 63 bytes, index id, the key's value, dim, chunk id and the
# float32 vector) fits a btree entry (2,704 bytes on 8 kB pages): a promoted text value may take 1,024 bytes.
COVERED_DIM = {"text": 384, "integer": 640, "boolean": 640}


def carry(conn: psycopg.Connection, key: str, kind: str) -> None:
    """Copy `key`'s promoted column onto every chunk (once), kept equal to its document's by triggers.

    Why: a filtered dense search ranks the chunks a filter matches, and a 1% filter at 1M chunks
    matches 10,000 chunks on as many heap pages (74.7 ms, docs/benchmarks.md). On the chunk, the
    key leads a btree that also holds each chunk's vector (`chunks_meta_<key>`, INCLUDE): the
    search reads the matching entries side by side in one index-only scan, never the heap, and
    is still the exact scan. Vectors wider than COVERED_DIM do not fit a btree entry; their chunks
    are in `chunks_meta_<key>_wide` instead (the key alone, the rows read from the heap).
    Carrying a key onto chunks already stored rewrites each chunk once (`UPDATE`, under the
    table's ACCESS EXCLUSIVE lock): declare keys before a large load where you can.
    """
    if key in _carried(conn):
        return
    col, wide = column(key), COVERED_DIM[kind]
    conn.execute(sql.SQL("ALTER TABLE chunks ADD COLUMN {} {}").format(col, sql.SQL(TYPES[kind])))
    # The copy changes no text: the postings trigger would re-post nothing (since 0023 it compares each
    # updated row's tsv) and sits it out, sparing that comparison per chunk. The owner is under forced RLS
    # too, so it names each tenant in turn (as migration 0010's backfill does).
    conn.execute("ALTER TABLE chunks DISABLE TRIGGER chunks_lexical_update")
    fill = sql.SQL(
        "UPDATE chunks c SET {col} = d.{col} FROM documents d "
        "WHERE d.document_id = c.document_id AND d.{col} IS NOT NULL"
    ).format(col=col)
    for (tenant,) in conn.execute("SELECT list_tenants()").fetchall():
        conn.execute("SELECT set_config('app.tenant_id', %s, true)", (tenant,))
        conn.execute(fill)
    conn.execute("SELECT set_config('app.tenant_id', '', true)")
    conn.execute("ALTER TABLE chunks ENABLE TRIGGER chunks_lexical_update")
    conn.execute(
        sql.SQL(
            "CREATE INDEX {} ON chunks (tenant_id, index_id, {col}) INCLUDE (dim, chunk_id, embedding) "
            "WHERE {col} IS NOT NULL AND dim <= {wide}"
        ).format(sql.Identifier(f"chunks_meta_{key}"), col=col, wide=sql.Literal(wide))
    )
    wide_index = "CREATE INDEX {} ON chunks (tenant_id, index_id, {col}) WHERE {col} IS NOT NULL AND dim > {wide}"
    conn.execute(sql.SQL(wide_index).format(sql.Identifier(f"chunks_meta_{key}_wide"), col=col, wide=sql.Literal(wide)))
    _sync_triggers(conn)


def _carried(conn: psycopg.Connection) -> dict[str, str]:
    """The promoted keys whose column the chunks carry (key -> type), in key order."""
    return dict(
        conn.execute(
            "SELECT f.key, f.type FROM filter_columns f JOIN pg_attribute a ON a.attrelid = 'chunks'::regclass "
            "AND a.attname = 'meta_' || f.key AND NOT a.attisdropped ORDER BY f.key"
        ).fetchall()
    )


def _sync_triggers(conn: psycopg.Connection) -> None:
    """(Re)write the two triggers that keep every carried column of a chunk equal to its document's."""
    cols = [column(k) for k in _carried(conn)]
    news = sql.SQL(", ").join(sql.SQL("NEW.{}").format(c) for c in cols)
    olds = sql.SQL(", ").join(sql.SQL("OLD.{}").format(c) for c in cols)
    sets = sql.SQL(", ").join(sql.SQL("{c} = NEW.{c}").format(c=c) for c in cols)
    # A chunk takes its document's values as it is written (RLS: the invoker's tenant, the chunk's own).
    conn.execute(
        sql.SQL(
            "CREATE OR REPLACE FUNCTION chunks_carry_promoted() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN "
            "SELECT {listed} INTO {news} FROM documents d WHERE d.document_id = NEW.document_id; RETURN NEW; END $f$"
        ).format(listed=sql.SQL(", ").join(sql.SQL("d.{}").format(c) for c in cols), news=news)
    )
    # A document whose promoted values change (its metadata was updated) passes them to its chunks.
    conn.execute(
        sql.SQL(
            "CREATE OR REPLACE FUNCTION documents_carry_promoted() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN "
            "UPDATE chunks SET {sets} WHERE document_id = NEW.document_id; RETURN NULL; END $f$"
        ).format(sets=sets)
    )
    conn.execute("DROP TRIGGER IF EXISTS chunks_carry_promoted ON chunks")
    conn.execute(
        "CREATE TRIGGER chunks_carry_promoted BEFORE INSERT OR UPDATE OF document_id ON chunks "
        "FOR EACH ROW EXECUTE FUNCTION chunks_carry_promoted()"
    )
    conn.execute("DROP TRIGGER IF EXISTS documents_carry_promoted ON documents")
    conn.execute(
        sql.SQL(
            "CREATE TRIGGER documents_carry_promoted AFTER UPDATE ON documents FOR EACH ROW "
            "WHEN (({olds}) IS DISTINCT FROM ({news})) EXECUTE FUNCTION documents_carry_promoted()"
        ).format(olds=sql.SQL("ROW({})").format(olds), news=sql.SQL("ROW({})").format(news))
    )


def apply(conn: psycopg.Connection, owner: str, columns: dict[str, str]) -> None:
    """Promote every declared key in one transaction, as `owner` (an admin connection)."""
    check_declared(columns)
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(owner)))
        for key, kind in sorted(columns.items()):
            promote(conn, key, kind)
        conn.execute("ANALYZE documents")


def promoted(conn: psycopg.Connection) -> dict[str, str]:
    """The promoted keys filters compile to columns for (key -> 'text' | 'integer' | 'boolean'): those the chunks
    carry (a key registered before chunks carried keys filters on jsonb until `sluice db up` carries it)."""
    return _carried(conn)
