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


def apply(conn: psycopg.Connection, owner: str, columns: dict[str, str]) -> None:
    """Promote every declared key in one transaction, as `owner` (an admin connection)."""
    check_declared(columns)
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(owner)))
        for key, kind in sorted(columns.items()):
            promote(conn, key, kind)
        conn.execute("ANALYZE documents")


def promoted(conn: psycopg.Connection) -> dict[str, str]:
    """The promoted keys and their types (key -> 'text' | 'integer' | 'boolean')."""
    return dict(conn.execute("SELECT key, type FROM filter_columns").fetchall())
