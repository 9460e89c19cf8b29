"""A plain-Python evaluator of the filter language: the reference the SQL compilation is checked against."""

from __future__ import annotations

from typing import Any

from tasks.records import Record

_MISSING = object()


def _lookup(meta: dict, path: list[str]) -> Any:
    for part in path:
        if not isinstance(meta, dict) or part not in meta:
            return _MISSING
        meta = meta[part]
    return meta


def _same_type(a: Any, b: Any) -> bool:
    def kind(v: Any) -> str:
        if isinstance(v, bool):
            return "bool"
        return "number" if isinstance(v, (int, float)) else type(v).__name__

    return kind(a) == kind(b)


def _leaf(value: Any, op: str, arg: Any) -> bool:
    if op == "exists":
        return (value is not _MISSING) == arg
    if value is _MISSING:
        return False
    if op == "eq":
        return _same_type(value, arg) and value == arg
    if op == "in":
        return any(_same_type(value, a) and value == a for a in arg)
    if not _same_type(value, arg):
        return False
    return {"gt": value > arg, "gte": value >= arg, "lt": value < arg, "lte": value <= arg}[op]


def matches(spec: dict | None, record: Record) -> bool:
    """Whether `record` satisfies filter `spec` (None or {} = everything)."""
    if not spec:
        return True
    return all(_entry(key, value, record) for key, value in spec.items())


def _entry(key: str, value: Any, record: Record) -> bool:
    if key == "and":
        return all(matches(v, record) for v in value)
    if key == "or":
        return any(matches(v, record) for v in value)
    if key == "not":
        return not matches(value, record)
    if key == "collection":
        names = (
            value["in"]
            if isinstance(value, dict) and "in" in value
            else [value.get("eq", value) if isinstance(value, dict) else value]
        )
        return record.collection in names
    scope, _, rest = key.partition(".")
    meta = record.metadata if scope == "doc" else record.chunk_metadata
    found = _lookup(meta, rest.split("."))
    cond = value if isinstance(value, dict) else {"eq": value}
    return all(_leaf(found, op, arg) for op, arg in cond.items())
