"""A small metadata filter language, compiled to parameterised SQL over jsonb.

A filter is a JSON-like mapping:

    {"doc.author": "Ada"}                               equality (exact JSON value)
    {"doc.year": {"gte": 2020, "lt": 2024}}             ranges: gt, gte, lt, lte (numbers or strings)
    {"chunk.page": {"in": [1, 2, 3]}}                   membership
    {"doc.lang": {"exists": true}}                      presence of a key (JSON null counts as present)
    {"doc.meta.team": {"eq": "search"}}                 nested keys: dots walk into objects
    {"and": [f, ...]}, {"or": [f, ...]}, {"not": f}     combinators; several keys in one mapping = and
    {"collection": "legal"} / {"collection": {"in": [...]}}   the document's collection

Keys start with `doc.` (document metadata) or `chunk.` (chunk metadata); key segments are ASCII
letters, digits, `_` or `-`. Values only ever travel as bind parameters: nothing from a filter is
spliced into SQL text. A missing key never matches (and `not` of a missing key matches), because
every leaf is wrapped in COALESCE(..., false).

Document keys promoted to typed columns (`sluice/filter_columns.py`) compile to conditions on those
columns when the value has the declared type: the same rows, found through a btree index under RLS. They
name the chunk's copy of the column (`c.meta_<key>`, kept equal to the document's), so such a filter needs
no join to `documents` to be evaluated.

`check_filter` measures a filter against every size limit without recursion before anything else
touches it; the API runs `compile_filter` (which calls it) on each request and the worker runs the
same function again, so a filter the API accepted is the filter the worker accepts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from sluice.errors import QueryError
from sluice.filter_columns import MAX_INTEGER, TYPES, column
from sluice.jsonwalk import walk

MAX_DEPTH = 8  # and/or/not levels
# Mappings and lists nested inside a filter of MAX_DEPTH levels: one per `not`, two per `and`/`or`
# (the list and the mapping in it), two for the deepest condition ({"in": [...]}).
MAX_NESTING = 2 * MAX_DEPTH + 1
MAX_CONDITIONS = 200  # keys, counted over every mapping of the filter (and items of and/or lists)
MAX_KEYS = 50  # keys in one mapping
MAX_IN = 1000
MAX_STRING = 2000
MAX_SEGMENTS = 8
MAX_KEY_CHARS = MAX_SEGMENTS * 65 + 6  # "chunk." plus MAX_SEGMENTS segments of 64 and their dots
MAX_BYTES = 64 * 1024  # the filter as JSON text
_SEGMENT = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SCOPES = {"doc": "d", "chunk": "c"}
_RANGE = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_OPERATORS = {"eq", "in", "exists", *_RANGE}
_COLLECTION_OPS = {"eq", "in"}


@dataclass
class CompiledFilter:
    """SQL (a psycopg Composable using named placeholders) plus the values to bind to them."""

    clause: sql.Composable
    params: dict[str, Any] = field(default_factory=dict)
    uses_doc: bool = False
    bounded: bool = False  # an index on promoted columns (or the collection) finds every matching row


class _Compiler:
    def __init__(self, prefix: str, promoted: Mapping[str, str]):
        self.prefix = prefix
        self.promoted = promoted
        self.params: dict[str, Any] = {}
        self.uses_doc = False

    def bind(self, value: Any) -> sql.Placeholder:
        name = f"{self.prefix}{len(self.params)}"
        self.params[name] = value
        return sql.Placeholder(name)

    def node(self, spec: Any, depth: int) -> sql.Composable:
        if depth > MAX_DEPTH:
            raise QueryError(f"filter is nested deeper than {MAX_DEPTH} levels: flatten it")
        if not isinstance(spec, dict) or not spec:
            raise QueryError(f"filter must be a non-empty mapping of key to condition, got {_show(spec)}")
        parts = [self.entry(key, value, depth) for key, value in spec.items()]
        return parts[0] if len(parts) == 1 else sql.SQL("({})").format(sql.SQL(" AND ").join(parts))

    def entry(self, key: Any, value: Any, depth: int) -> sql.Composable:
        if key in ("and", "or"):
            if not isinstance(value, list) or not value:
                raise QueryError(f"filter operator {key!r} needs a non-empty list of filters")
            joined = sql.SQL(f" {key.upper()} ").join(self.node(v, depth + 1) for v in value)
            return sql.SQL("({})").format(joined)
        if key == "not":
            return sql.SQL("(NOT {})").format(self.node(value, depth + 1))
        if key == "collection":
            return self.collection(value)
        return self.field(key, _parse_key(key), value)

    def collection(self, value: Any) -> sql.Composable:
        self.uses_doc = True
        cond = value if isinstance(value, dict) else {"eq": value}
        if len(cond) != 1 or next(iter(cond)) not in _COLLECTION_OPS:
            raise QueryError("filter key 'collection' takes a name, {'eq': name} or {'in': [names]}")
        op, arg = next(iter(cond.items()))
        names = arg if op == "in" else [arg]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise QueryError("filter key 'collection' needs collection names as strings")
        return sql.SQL("d.collection = ANY({})").format(self.bind(names))

    def field(self, key: str, target: tuple[str, list[str]], value: Any) -> sql.Composable:
        alias, path = target
        expr = sql.SQL("({}.metadata #> {})").format(sql.Identifier(alias), self.bind(path))
        cond = value if isinstance(value, dict) else {"eq": value}
        if not cond:
            raise QueryError(f"filter key {key!r} has an empty condition")
        kind = self.promoted.get(path[0]) if alias == "d" and len(path) == 1 else None
        on_column = [_on_column(kind, op, arg) for op, arg in cond.items()]
        self.uses_doc |= alias == "d" and not all(on_column)  # a promoted column is on the chunk too
        parts = [
            self.column_leaf(path[0], kind, op, arg) if column else self.leaf(expr, op, arg, key)
            for column, (op, arg) in zip(on_column, cond.items(), strict=True)
        ]
        return sql.SQL("({})").format(sql.SQL(" AND ").join(parts))

    def column_leaf(self, key: str, kind: str, op: str, arg: Any) -> sql.Composable:
        """A condition on a promoted column: an index condition under RLS (its operators are leakproof)."""
        col = sql.SQL("c.{}").format(column(key))  # the chunk's copy of its document's column (filter_columns.carry)
        cast = sql.SQL(TYPES[kind])
        if op == "in":
            test = sql.SQL("{} = ANY({}::{}[])").format(col, self.bind(list(arg)), cast)
        else:
            test = sql.SQL("{} {} {}::{}").format(col, sql.SQL(_RANGE.get(op, "=")), self.bind(arg), cast)
        # NULL (key absent or of another type) never matches, and `not` of it does, as on the jsonb path.
        return sql.SQL("({} IS NOT NULL AND {})").format(col, test)

    def leaf(self, expr: sql.Composable, op: Any, arg: Any, key: str) -> sql.Composable:
        if op not in _OPERATORS:
            raise QueryError(f"filter key {key!r}: unknown operator {_show(op)}; use one of {sorted(_OPERATORS)}")
        if op == "exists":
            if not isinstance(arg, bool):
                raise QueryError(f"filter key {key!r}: 'exists' takes true or false")
            return sql.SQL("({} IS NOT NULL)" if arg else "({} IS NULL)").format(expr)
        if op == "in":
            if not isinstance(arg, list) or not arg or len(arg) > MAX_IN:
                raise QueryError(f"filter key {key!r}: 'in' takes a list of 1 to {MAX_IN} values")
            values = [Jsonb(_scalar(v, key, op)) for v in arg]
            return sql.SQL("COALESCE({} = ANY({}::jsonb[]), false)").format(expr, self.bind(values))
        if op == "eq":
            return sql.SQL("COALESCE({} = {}::jsonb, false)").format(expr, self.bind(Jsonb(_scalar(arg, key, op))))
        if isinstance(arg, bool) or not isinstance(arg, (int, float, str)):
            raise QueryError(f"filter key {key!r}: {op!r} compares numbers or strings, got {_show(arg)}")
        value = self.bind(Jsonb(_scalar(arg, key, op)))
        # jsonb orders across types (string < number < ...): require the same JSON type first.
        return sql.SQL("COALESCE(jsonb_typeof({e}) = jsonb_typeof({v}::jsonb) AND {e} {o} {v}::jsonb, false)").format(
            e=expr, v=value, o=sql.SQL(_RANGE[op])
        )


def _fits(kind: str, value: Any) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool) and abs(value) < MAX_INTEGER
    if kind == "text":
        return isinstance(value, str) and len(value) <= MAX_STRING and "\x00" not in value
    return isinstance(value, bool)


def _on_column(kind: str | None, op: Any, arg: Any) -> bool:
    """Whether condition `op: arg` on a key promoted as `kind` compiles to its column (same rows as jsonb)."""
    if kind is None or op not in ("eq", "in", *_RANGE) or (op in _RANGE and kind == "boolean"):
        return False
    values = arg if op == "in" else [arg]
    return isinstance(values, list) and 0 < len(values) <= MAX_IN and all(_fits(kind, v) for v in values)


def _bounded(spec: Any, promoted: Mapping[str, str]) -> bool:
    """Whether an index finds every row `spec` matches: one indexed condition in an AND, every branch of an OR."""
    for key, value in spec.items():
        if key == "and" and any(_bounded(v, promoted) for v in value):
            return True
        if key == "or" and all(_bounded(v, promoted) for v in value):
            return True
        name = key[4:] if isinstance(key, str) and key.startswith("doc.") else None
        if name in promoted:
            cond = value if isinstance(value, dict) else {"eq": value}
            if any(_on_column(promoted[name], op, arg) for op, arg in cond.items()):
                return True
    return False


def _parse_key(key: Any) -> tuple[str, list[str]]:
    if not isinstance(key, str):
        raise QueryError(f"filter key {_show(key)} is not a string")
    scope, _, rest = key.partition(".")
    if scope not in _SCOPES or not rest:
        raise QueryError(
            f"filter key {key!r} must start with 'doc.' or 'chunk.' (or be 'and', 'or', 'not', 'collection')"
        )
    segments = rest.split(".")
    if len(segments) > MAX_SEGMENTS or not all(_SEGMENT.fullmatch(s) for s in segments):
        raise QueryError(
            f"filter key {key!r} is invalid: use at most {MAX_SEGMENTS} segments of 1-64 ASCII letters, "
            "digits, '_' or '-'"
        )
    return _SCOPES[scope], segments


def _scalar(value: Any, key: str, op: str) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise QueryError(f"filter key {key!r}: {op!r} value is NaN or infinite")
        return value
    if isinstance(value, str):
        if len(value) > MAX_STRING or "\x00" in value:
            raise QueryError(f"filter key {key!r}: {op!r} string is longer than {MAX_STRING} or contains NUL")
        return value
    raise QueryError(f"filter key {key!r}: {op!r} takes a string, number, boolean or null, got {_show(value)}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Budget:
    """Running totals of one filter, checked item by item as `walk` reaches them."""

    def __init__(self) -> None:
        self.conditions = 0
        self.size = 0

    def add(self, key: Any, item: Any) -> None:
        if key is not None:
            self.conditions += 1
            if self.conditions > MAX_CONDITIONS:
                raise QueryError(
                    f"filter has more than {MAX_CONDITIONS} conditions (keys over all its mappings): simplify it"
                )
            self.size += _key_size(key)
        self.size += _item_size(key, item)
        if self.size > MAX_BYTES:
            raise QueryError(f"filter is longer than {MAX_BYTES} characters as JSON: simplify it")


def _key_size(key: Any) -> int:
    if isinstance(key, str) and len(key) > MAX_KEY_CHARS:
        raise QueryError(f"filter key of {len(key)} characters is longer than {MAX_KEY_CHARS}: shorten it")
    return len(str(key)) + 4


def _item_size(key: Any, item: Any) -> int:
    """Characters `item` adds to the filter's JSON text (containers: brackets and commas); raise past a limit."""
    if isinstance(item, dict):
        if len(item) > MAX_KEYS:
            raise QueryError(f"a filter mapping has {len(item)} keys, more than {MAX_KEYS}: combine them with 'and'")
        return 2
    if isinstance(item, (list, tuple)):
        return _list_size(key, item)
    if isinstance(item, str):
        if len(item) > MAX_STRING:
            raise QueryError(f"filter string of {len(item)} characters is longer than {MAX_STRING}: shorten it")
        return len(item) + 2
    if isinstance(item, float) and not math.isfinite(item):
        where = f" under {key!r}" if key is not None else ""
        raise QueryError(f"filter value{where} is NaN or infinite (1e400 overflows to infinity): use a finite number")
    return item.bit_length() // 3 + 1 if isinstance(item, int) else 24


def _list_size(key: Any, item: list | tuple) -> int:
    if key in ("and", "or") and len(item) > MAX_CONDITIONS:
        raise QueryError(f"filter has more than {MAX_CONDITIONS} conditions (items of {key!r}): simplify it")
    if len(item) > MAX_IN:
        raise QueryError(f"filter operator {key!r} takes a list of 1 to {MAX_IN} values, got {len(item)}")
    return 2 + len(item)


def check_filter(spec: Any) -> None:
    """Refuse a filter past any size limit, walking it without recursion; the QueryError names the limit."""
    if spec is None:
        return
    if not isinstance(spec, dict):
        raise QueryError(f"filter must be a mapping of key to condition, got {_show(spec)}")
    budget = _Budget()
    for depth, key, item in walk(spec):
        if depth > MAX_NESTING:
            raise QueryError(
                f"filter is nested deeper than {MAX_DEPTH} levels ({MAX_NESTING} mappings and lists): flatten it"
            )
        budget.add(key, item)


def compile_filter(
    spec: dict[str, Any] | None, prefix: str = "f", promoted: Mapping[str, str] | None = None
) -> CompiledFilter:
    """Compile a filter to a SQL condition over chunks `c` and documents `d`; raise QueryError if invalid.

    `promoted` (key -> type, `sluice.filter_columns.promoted`) compiles conditions on those document keys
    to their typed columns where the value's type allows; the rows matched are the same either way.
    """
    check_filter(spec)  # first: the compiler below recurses, and binds a parameter per condition
    if spec is None or spec == {}:
        return CompiledFilter(sql.SQL("TRUE"))
    compiler = _Compiler(prefix, promoted or {})
    clause = compiler.node(spec, 1)
    return CompiledFilter(clause, compiler.params, compiler.uses_doc, _bounded(spec, promoted or {}))
