"""Malformed input through the real API (uvicorn + worker), the CLI and ingestion: each is refused with
a clear 4xx or error message, none gives a 5xx or a crash, and the tenant's stored data is untouched.

Cases already covered elsewhere are not repeated: path traversal in named sources and upload names,
NUL characters, rate limiting (tests/test_serving.py); parse failures, size limit, empty folders
(tests/test_bad_input.py); schema-driven fuzzing (tests/test_serving_fuzz.py).
"""

from __future__ import annotations

import base64

import pytest

from tests.serving_support import assert_request_refused, refusal_cases

Q = "/v1/query"
J = "/v1/jobs"
JSON = {"content-type": "application/json"}


def _nested(depth: int) -> str:
    return '{"question": "bees", "filters": ' + '{"and": [' * depth + "{}" + "]}" * depth + "}"


def _upload(name: str, data: bytes) -> dict:
    return {"kind": "ingest", "files": [{"name": name, "content_base64": base64.b64encode(data).decode()}]}


# (id, method, path, request kwargs, allowed statuses, text the message must contain or "")
API_CASES = [
    ("truncated-json", "POST", Q, {"content": b'{"question": ', "headers": JSON}, {422}, "JSON decode error"),
    ("json-array", "POST", Q, {"json": ["bees"]}, {422}, ""),
    ("json-string", "POST", Q, {"json": "bees"}, {422}, ""),
    ("question-int", "POST", Q, {"json": {"question": 42}}, {422}, "question"),
    ("question-null", "POST", Q, {"json": {"question": None}}, {422}, "question"),
    ("question-blank", "POST", Q, {"json": {"question": "   "}}, {422}, "question"),
    ("question-100k", "POST", Q, {"json": {"question": "b" * 100_000}}, {422}, "4000"),
    ("question-nan", "POST", Q, {"content": b'{"question": NaN}', "headers": JSON}, {422}, ""),
    ("unknown-field", "POST", Q, {"json": {"question": "bees", "top_k": 5}}, {422}, "top_k"),
    ("stream-not-bool", "POST", Q, {"json": {"question": "bees", "stream": "perhaps"}}, {422}, "stream"),
    ("filters-string", "POST", Q, {"json": {"question": "bees", "filters": "lang=en"}}, {422}, "filters"),
    ("filters-unknown-op", "POST", Q, {"json": {"question": "bees", "filters": {"$where": "1"}}}, {422}, ""),
    ("filters-deep", "POST", Q, {"content": _nested(5000).encode(), "headers": JSON}, {400, 413, 422}, ""),
    (
        "filters-huge",
        "POST",
        Q,
        {"json": {"question": "b", "filters": {"or": [{"lang": "x"}] * 50_000}}},
        {413, 422},
        "",
    ),
    ("collection-long", "POST", Q, {"json": {"question": "bees", "collection": "c" * 5000}}, {422}, "collection"),
    ("lone-surrogate", "POST", Q, {"content": b'{"question": "bees \\ud800"}', "headers": JSON}, {422}, ""),
    ("text-plain", "POST", Q, {"content": b"question=bees", "headers": {"content-type": "text/plain"}}, {422}, ""),
    ("empty-body", "POST", Q, {"content": b"", "headers": JSON}, {422}, ""),
    ("job-kind-unknown", "POST", J, {"json": {"kind": "delete", "question": "x"}}, {422}, "kind"),
    (
        "job-source-and-files",
        "POST",
        J,
        {"json": {**_upload("a.md", b"# a"), "source": "corpus"}},
        {422},
        "exactly one",
    ),
    ("job-neither", "POST", J, {"json": {"kind": "ingest"}}, {422}, "exactly one"),
    ("job-no-files", "POST", J, {"json": {"kind": "ingest", "files": []}}, {422}, "files"),
    (
        "job-bad-base64",
        "POST",
        J,
        {"json": {"kind": "ingest", "files": [{"name": "a.md", "content_base64": "@@"}]}},
        {422},
        "base64",
    ),
    ("job-oversized-upload", "POST", J, {"json": _upload("big.txt", b"x" * (21 * 1024 * 1024))}, {413}, "exceed"),
    (
        "job-101-files",
        "POST",
        J,
        {"json": {"kind": "ingest", "files": [{"name": f"{i}.md", "content_base64": ""} for i in range(101)]}},
        {422},
        "",
    ),
    ("job-name-unicode-dir", "POST", J, {"json": _upload("a\u2215..\u2215b.md", b"# a")}, {202, 422}, ""),
    ("job-id-garbage", "GET", J + "/%2e%2e%2fetc%2fpasswd", {}, {404}, ""),
    ("job-id-long", "GET", J + "/" + "9" * 5000, {}, {404, 414, 422}, ""),
    (
        "idempotency-key-long",
        "POST",
        Q,
        {"json": {"question": "bees"}, "headers": {"Idempotency-Key": "k" * 300}},
        {422},
        "",
    ),
    ("method-not-allowed", "PUT", Q, {"json": {"question": "bees"}}, {405}, ""),
]


@refusal_cases(API_CASES)
def test_api_refuses_malformed_input(rel_api, bee_tenant, method, path, kwargs, allowed, says):
    assert_request_refused(rel_api, bee_tenant[1], method, path, kwargs, allowed, says)


def test_nothing_stored_was_lost_and_the_service_still_answers(rel_api, bee_tenant, db):
    """Runs after the malformed cases (same module, file order): the tenant's data and answers are intact."""
    tenant, key = bee_tenant
    with db.tenant(tenant) as conn:
        assert conn.execute("SELECT count(*) FROM documents").fetchone()[0] >= 1
    with rel_api.client(key, timeout=120) as client:
        r = client.post(Q, json={"question": "How do honeybees tell hive mates where flowers are?"})
    assert r.status_code == 200 and "waggle" in r.json()["answer"], r.text


CLI_CASES = [
    ("status-negative-interval", ["status", "--interval", "-1"], "interval"),
    ("status-bad-url", ["status", "--url", "not a url", "--interval", "0.1"], "error"),
    ("ingest-missing-path", ["ingest", "/definitely/not/here", "--tenant", "TENANT"], "/definitely/not/here"),
    ("query-unknown-tenant", ["query", "bees?", "--tenant", "no-such-tenant-x"], "tenant"),
    ("eval-missing-grid", ["eval", "/no/such/grid.yaml"], "grid"),
]


@pytest.mark.parametrize(("args", "says"), [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_refuses_malformed_input(cli, new_tenant, args, says):
    args = [new_tenant("cli") if a == "TENANT" else a for a in args]
    result = cli(*args)
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert says.lower() in result.output.lower(), result.output
