"""Hypothesis strategies for request filters at their size and depth extremes, drawn as JSON text.

Text, not Python values: a filter nested 2,000 levels deep would make json.dumps recurse in the test
process, and NaN, Infinity or 1e400 are JSON the client must send as written.
"""

from __future__ import annotations

import json

from hypothesis import strategies as st

from sluice.filters import MAX_CONDITIONS, MAX_DEPTH, MAX_IN, MAX_KEYS, MAX_NESTING, MAX_STRING

NUMBER_TOKENS = ("NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e308", "5e-324", "-0.0", "1" + "0" * 300)
DEPTHS = (0, 1, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, MAX_NESTING, MAX_NESTING + 1, 100, 500, 950, 2000)
WIDTHS = (1, MAX_KEYS - 1, MAX_KEYS, MAX_KEYS + 1, MAX_CONDITIONS + 1, 5000, 60_000)
LENGTHS = (0, 1, MAX_IN, MAX_IN + 1, 50_000)
STRINGS = (MAX_STRING - 1, MAX_STRING, MAX_STRING + 1, 70_000)
KEYS = (
    "doc.year",
    "chunk.page",
    "doc.meta.team",
    "collection",
    "and",
    "or",
    "not",
    "doc.",
    "author",
    "doc." + "a" * 65,
    "doc." + ".".join("a" * 9),
)
OPERATORS = ("eq", "in", "exists", "gt", "gte", "lt", "lte", "like", "$where")


def nested(depth: int) -> dict:
    """{"not": {"not": ... {"doc.x": 1}}}, `depth` levels of `not` (the poison filter of issue 14)."""
    spec: dict = {"doc.x": 1}
    for _ in range(depth):
        spec = {"not": spec}
    return spec


def nested_text(depth: int) -> str:
    """The same filter as JSON text, built as text (json.dumps would recurse on a deep one)."""
    return '{"not": ' * depth + '{"doc.x": 1}' + "}" * depth


def short_scalars() -> st.SearchStrategy[str]:
    """One short JSON scalar: ordinary values, non-finite and huge numbers, NUL and lone-surrogate strings."""
    return st.one_of(
        st.integers(min_value=-(10**30), max_value=10**30).map(str),
        st.sampled_from(NUMBER_TOKENS + ("true", "false", "null")),
        st.text(max_size=30).map(json.dumps),
        st.sampled_from(('"a\\u0000b"', '"\\ud800"', '"\\udc00x"')),
    )


def scalars() -> st.SearchStrategy[str]:
    """A short scalar, or a string around MAX_STRING characters and far beyond it."""
    return st.one_of(short_scalars(), st.sampled_from(STRINGS).map(lambda n: json.dumps("x" * n)))


def keys() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(KEYS), st.text(max_size=20)).map(json.dumps)


@st.composite
def conditions(draw) -> str:
    """The right-hand side of one key: a value, {operator: value} or {"in": [n values]}."""
    kind = draw(st.sampled_from(("value", "operator", "in")))
    if kind == "value":
        return draw(scalars())
    if kind == "operator":
        return "{" + json.dumps(draw(st.sampled_from(OPERATORS))) + ": " + draw(scalars()) + "}"
    values = draw(st.lists(short_scalars(), min_size=1, max_size=3))  # long strings x long lists: too slow
    n = draw(st.sampled_from(LENGTHS))
    return '{"in": [' + ", ".join(values[i % len(values)] for i in range(n)) + "]}"


@st.composite
def deep(draw) -> str:
    """A short leaf wrapped in `not`, `and` and `or` to one of DEPTHS levels (one join: no copy per level)."""
    leaf = "{" + draw(keys()) + ": " + draw(short_scalars()) + "}"
    wrappers = draw(st.lists(st.sampled_from(("not", "and", "or")), min_size=1, max_size=4))
    kinds = [wrappers[level % len(wrappers)] for level in range(draw(st.sampled_from(DEPTHS)))]
    opening = "".join('{"not": ' if kind == "not" else '{"' + kind + '": [' for kind in kinds)
    closing = "".join("}" if kind == "not" else "]}" for kind in reversed(kinds))
    return opening + leaf + closing


@st.composite
def wide(draw) -> str:
    """One mapping of WIDTHS keys, or an and/or list of WIDTHS conditions."""
    n = draw(st.sampled_from(WIDTHS))
    if draw(st.booleans()):
        return "{" + ", ".join(f'"doc.k{i}": {i}' for i in range(n)) + "}"
    kind = draw(st.sampled_from(("and", "or")))
    return '{"' + kind + '": [' + ", ".join(f'{{"doc.k": {i}}}' for i in range(n)) + "]}"


def filters() -> st.SearchStrategy[str]:
    """A filter as JSON text: deep, wide, or one key with any condition."""
    single = st.builds(lambda k, c: "{" + k + ": " + c + "}", keys(), conditions())
    return st.one_of(deep(), wide(), single, st.sampled_from(("{}", "null", "[]", '"doc.x"', "1e400")))
