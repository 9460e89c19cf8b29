"""Filter language: valid filters round-trip against a Python reference; hostile input is refused or literal."""

from __future__ import annotations

import numpy as np
import pytest

from bench.synthetic import IDENTITY, SYNTHETIC, make_records, unit_vectors
from sluice.errors import QueryError
from sluice.filters import MAX_DEPTH, compile_filter
from tasks.records import Record, store_records
from tasks.retrieve import exact_search
from tasks.store import register_index
from tests.filter_reference import matches

NASTY = [
    "O'Brien",
    "x'; DROP TABLE chunks; --",
    "$$; SELECT 1; $$",
    "/* comment */ OR 1=1",
    "a\\' OR ''='",
    "%(q)s {filter} %s",
    "аuthor",  # Cyrillic а: a confusable, stored and matched only as itself
    "ｆｕｌｌ",
]


@pytest.fixture(scope="module")
def loaded(db):
    from sluice.db import create_tenant

    tenant = "filters"
    create_tenant(db, tenant)
    rng = np.random.default_rng(11)
    records = make_records(300, rng, prefix=tenant)
    records += [
        Record(f"nasty-{i}", f"nasty {i}", {"author": v, "tags": [v]}, {"note": v}) for i, v in enumerate(NASTY)
    ]
    vectors = unit_vectors(len(records), rng)
    with db.tenant(tenant) as conn:
        register_index(conn, SYNTHETIC, IDENTITY)
        store_records(conn, SYNTHETIC.index_id, records, vectors)
    return tenant, records


def _select(db, tenant: str, spec: dict | None) -> set[str]:
    with db.tenant(tenant) as conn:
        hits = exact_search(conn, SYNTHETIC.index_id, unit_vectors(1, np.random.default_rng(0))[0], 10_000, spec)
    return {h.source_id for h in hits}


VALID = [
    {"doc.author": "author-3"},
    {"doc.year": {"gte": 2010, "lt": 2015}},
    {"doc.year": {"gt": 2020}, "chunk.page": {"lte": 10}},
    {"chunk.section": {"in": ["intro", "results"]}},
    {"doc.lang": {"exists": False}},
    {"doc.lang": {"exists": True}, "doc.lang": "de"},  # noqa: F601 (last key wins, as in JSON)
    {"doc.team.name": "methods"},
    {"doc.lang": {"gte": "en"}},
    {"or": [{"doc.pct": 1}, {"doc.pct": {"in": [2, 3]}}, {"chunk.page": 7}]},
    {"not": {"doc.lang": "en"}},
    {"and": [{"not": {"or": [{"doc.year": {"lt": 2005}}, {"doc.year": {"gt": 2020}}]}}, {"collection": "legal"}]},
    {"collection": {"in": ["eng", "legal"]}, "doc.year": 2001.0},
    {"doc.year": "2001"},  # a string never equals a number
    {"doc.author": {"eq": NASTY[1]}},
    {"chunk.note": {"in": NASTY[2:5]}},
]


@pytest.mark.parametrize("spec", VALID, ids=[str(i) for i in range(len(VALID))])
def test_valid_filters_match_the_reference(db, loaded, spec):
    tenant, records = loaded
    expected = {r.source_id for r in records if matches(spec, r)}
    assert _select(db, tenant, spec) == expected
    assert expected or spec.get("doc.year") == "2001"


@pytest.mark.parametrize("value", NASTY)
def test_hostile_values_are_literals(db, loaded, value):
    tenant, records = loaded
    expected = {r.source_id for r in records if r.metadata.get("author") == value}
    assert len(expected) == 1
    assert _select(db, tenant, {"doc.author": value}) == expected
    assert _select(db, tenant, {"chunk.note": {"in": [value]}}) == expected
    compiled = compile_filter({"doc.author": value})
    assert value not in compiled.clause.as_string(None)  # only placeholders reach SQL text


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ({"doc.author'; DROP TABLE chunks; --": "x"}, "doc.author'"),
        ({"doc.a b": 1}, "doc.a b"),
        ({"doc.аuthor": "x"}, "doc.аuthor"),  # Cyrillic а in the key
        ({"ｄoc.author": "x"}, "ｄoc.author"),  # fullwidth d
        ({"doc.a/*x*/": 1}, "doc.a/*x*/"),
        ({"doc.$$": 1}, "doc.$$"),
        ({"author": "x"}, "'author'"),
        ({"doc.": "x"}, "'doc.'"),
        ({"doc.year": {"between": [1, 2]}}, "between"),
        ({"doc.year": {"gt": [1]}}, "gt"),
        ({"doc.year": {"gt": True}}, "gt"),
        ({"doc.year": {"in": []}}, "in"),
        ({"doc.year": {"exists": "yes"}}, "exists"),
        ({"doc.year": {"eq": {"nested": 1}}}, "eq"),
        ({"doc.year": {"eq": float("nan")}}, "NaN"),
        ({"doc.author": "a\x00b"}, "NUL"),
        ({"and": {"doc.a": 1}}, "'and'"),
        ({"or": []}, "'or'"),
        ({"collection": {"like": "x"}}, "collection"),
        ({"collection": 5}, "collection"),
        ({1: "x"}, "1"),
        ({}, None),
    ],
)
def test_invalid_filters_name_the_offender(spec, named):
    if named is None:
        assert compile_filter(spec).params == {}  # empty filter = no restriction
        return
    with pytest.raises(QueryError) as err:
        compile_filter(spec)
    assert named in str(err.value)


def test_deep_and_wide_filters_are_refused():
    deep: dict = {"doc.a": 1}
    for _ in range(MAX_DEPTH + 1):
        deep = {"not": deep}
    with pytest.raises(QueryError, match="nested deeper"):
        compile_filter(deep)
    very_deep: dict = {"doc.a": 1}
    for _ in range(5000):  # would overflow a recursive compiler without a depth limit
        very_deep = {"and": [very_deep]}
    with pytest.raises(QueryError, match="nested deeper"):
        compile_filter(very_deep)
    with pytest.raises(QueryError, match="more than"):
        compile_filter({"or": [{"doc.a": i} for i in range(5000)]})
    with pytest.raises(QueryError, match="'in' takes"):
        compile_filter({"doc.a": {"in": list(range(5000))}})


def test_filter_params_never_collide_with_query_params():
    compiled = compile_filter({"or": [{"doc.a": 1}, {"chunk.b": {"gte": 2}}, {"collection": "x"}]})
    assert all(name.startswith("f") and name[1:].isdigit() for name in compiled.params)
    assert compiled.uses_doc


@pytest.mark.parametrize("index_id", [*NASTY, SYNTHETIC.index_id.upper(), SYNTHETIC.index_id + "0"])
def test_an_index_id_is_checked_before_it_is_written_into_sql(db, loaded, index_id):
    from sluice.config import RetrievalConfig
    from tasks.retrieve import dense_search, lexical_search

    q = unit_vectors(1, np.random.default_rng(0))[0]
    with db.tenant(loaded[0]) as conn:  # the searches name the index as a literal (migration 0014's partial indexes)
        for search in (
            lambda: exact_search(conn, index_id, q, 5),
            lambda: dense_search(conn, index_id, q, RetrievalConfig(k=5), {"doc.author": "x"}),
            lambda: lexical_search(conn, index_id, "nasty", RetrievalConfig(k=5)),
        ):
            with pytest.raises(QueryError, match="16 lowercase hex digits"):
                search()
