"""`sluice mcp` end to end: the official MCP client over stdio and streamable HTTP, a real worker, Postgres and API.

The API runs as `sluice serve` (a subprocess, /mcp mounted beside /v1); stdio sessions spawn `sluice mcp`.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import uuid

import anyio
import httpx
import pytest
from mcp.shared.exceptions import MCPError

from serving.auth import create_key
from sluice.db import create_tenant
from tests.mcp_support import TOOL_NAMES, call, call_error, http_session, stdio_session
from tests.reliability.stack import drop_keys, metric, private_settings
from tests.serving_support import free_port, serving_stack, wait_job, wait_up, worker_env

DOCS_A = {
    "bees.md": "# Bees\n\nHoneybees communicate the location of flowers to their hive mates with a waggle dance.\n",
    "pollen.md": "# Pollen\n\nHoneybees carry pollen home in baskets on their hind legs, packed with nectar.\n",
    "rivers.md": "# Rivers\n\nThe Nile flows north through Egypt and empties into the Mediterranean Sea.\n",
}
DOC_B = "# Moths\n\nMoths steer by the moon at night and gather around street lamps by mistake.\n"
QUESTION = "How do honeybees tell their hive mates where flowers are?"


@pytest.fixture(scope="module")
def stack(migrated, db, tmp_path_factory):
    """A private worker and `sluice serve`: (settings, API URL)."""
    tmp = tmp_path_factory.mktemp("mcp")
    settings = private_settings(migrated, "mcp", tmp, ingest_root=tmp / "ingest-root")
    settings.ingest_root.mkdir()
    try:
        with serving_stack(settings, tmp, concurrency=1, api_process=True) as running:
            yield settings, running.url
    finally:
        drop_keys(settings)


@pytest.fixture(scope="module")
def tenants(stack, db):
    """Tenant A's three documents ingested through the MCP `ingest` tool; tenant B's one through REST."""
    settings, url = stack
    out = {}
    for name in ("a", "b"):
        tenant = f"mcp{name}-{uuid.uuid4().hex[:8]}"
        create_tenant(db, tenant)
        out[name] = {"tenant": tenant, "key": create_key(db, tenant).secret}
    out["a"]["job"] = anyio.run(_ingest_a, url, out["a"]["key"])
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {out['b']['key']}"}, timeout=60) as client:
        files = [{"name": "moths.md", "content_base64": base64.b64encode(DOC_B.encode()).decode()}]
        job = client.post("/v1/jobs", json={"kind": "ingest", "files": files}).json()["job_id"]
        out["b"]["job"] = job
        assert wait_job(client, job, timeout=300)["status"] == "succeeded"
    for name in ("a", "b"):
        out[name]["docs"] = anyio.run(_documents, url, out[name]["key"])
    assert len(out["a"]["docs"]) == 3 and len(out["b"]["docs"]) == 1, out
    return out


async def _ingest_a(url: str, key: str) -> str:
    async with http_session(url, key) as session:
        files = [{"name": name, "text": text} for name, text in DOCS_A.items()]
        job = await call(session, "ingest", files=files)
        assert job["kind"] == "ingest" and job["status"] == "queued", job
        done = await _wait_job(session, job["job_id"])
        assert done["status"] == "succeeded" and done["result"]["ingested"] == 3, done
        return job["job_id"]


async def _wait_job(session, job_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = await call(session, "job_status", job_id=job_id)
        if status["status"] in ("succeeded", "failed"):
            return status
        await anyio.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish")


async def _documents(url: str, key: str) -> dict[str, str]:
    async with http_session(url, key) as session:
        page = await call(session, "list_documents", limit=200)
        return {d["document_id"]: d["document"] for d in page["documents"]}


def test_http_lists_tools_with_schemas_and_resources(stack, tenants):
    _, url = stack

    async def check() -> None:
        async with http_session(url, tenants["a"]["key"]) as session:
            tools = {t.name: t for t in (await session.list_tools()).tools}
            assert set(tools) == TOOL_NAMES
            for tool in tools.values():
                assert len(tool.description or "") > 40 and tool.input_schema["type"] == "object", tool.name
            assert tools["search"].input_schema["required"] == ["query"]
            assert tools["search"].input_schema["properties"]["k"]["anyOf"][0]["maximum"] == 50
            uris = {str(r.uri) for r in (await session.list_resources()).resources}
            assert "sluice://collections/default" in uris
            assert {f"sluice://documents/{d}" for d in tenants["a"]["docs"]} <= uris
            bees = next(d for d, name in tenants["a"]["docs"].items() if name.endswith("bees.md"))
            read = await session.read_resource(f"sluice://documents/{bees}")
            assert "waggle dance" in read.contents[0].text
            listing = json.loads((await session.read_resource("sluice://collections/default")).contents[0].text)
            assert {d["document_id"] for d in listing["documents"]} == set(tenants["a"]["docs"])

    anyio.run(check)


def test_answer_and_search_agree_with_rest(stack, tenants):
    settings, url = stack
    key = tenants["a"]["key"]

    async def mcp_side() -> tuple[dict, dict, dict, dict]:
        async with http_session(url, key) as session:
            answer = await call(session, "answer", question=QUESTION)
            found = await call(session, "search", query=QUESTION)
            top = found["chunks"][0]
            read = await call(
                session, "read_document", document_id=top["document_id"], start=top["span"][0], end=top["span"][1]
            )
            one = await call(session, "search", query=QUESTION, k=1, mode="lexical")
            return answer, found, read, one

    answer, found, read, one = anyio.run(mcp_side)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
        rest = client.post("/v1/query", json={"question": QUESTION})
    assert rest.status_code == 200, rest.text
    rest = rest.json()
    # The same Celery path and answer cache: the MCP answer was computed, REST replays it from the cache.
    assert answer["cached"] is False and rest["cached"] is settings.answer_cache
    assert (answer["answer"], answer["config_id"], answer["index_id"]) == (
        rest["answer"],
        rest["config_id"],
        rest["index_id"],
    )
    cited = [(c["document_id"], tuple(c["span"])) for c in rest["citations"]]
    assert cited and [(c["document_id"], tuple(c["span"])) for c in answer["citations"]] == cited
    chunks = [(c["document_id"], tuple(c["span"])) for c in found["chunks"]]
    # Each cited span (the generator cites the sentences it used) lies inside a chunk `search` returned.
    assert all(any(d == cd and cs <= s <= e <= ce for cd, (cs, ce) in chunks) for d, (s, e) in cited), (chunks, cited)
    assert chunks[0][0] == cited[0][0]
    assert found["index_id"] == rest["index_id"] and tenants["a"]["docs"][chunks[0][0]].endswith("bees.md")
    assert [c["score"] for c in found["chunks"]] == sorted((c["score"] for c in found["chunks"]), reverse=True)
    assert read["text"] == found["chunks"][0]["text"] and "waggle" in read["text"]
    assert one["mode"] == "lexical" and len(one["chunks"]) == 1
    if rest["cached"]:  # replayed from the cache: the same stored answer
        assert answer["answer_id"] == rest["answer_id"]


def test_an_agent_rates_an_answer_and_another_tenant_cannot(stack, tenants, db):
    """The `feedback` tool stores the rating (as POST /v1/feedback); another tenant's answer id reads as unknown."""
    _, url = stack

    async def rate() -> tuple[dict, str, str]:
        async with http_session(url, tenants["a"]["key"]) as session:
            answer = await call(session, "answer", question=QUESTION)
            cited = answer["citations"][0]
            ev = {"document": cited["document"], "span": cited["span"]}
            done = await call(session, "feedback", answer_id=answer["answer_id"], rating="up", evidence=ev)
        async with http_session(url, tenants["b"]["key"]) as session:
            theirs = await call_error(session, "feedback", {"answer_id": answer["answer_id"], "rating": "down"})
            never = await call_error(session, "feedback", {"answer_id": str(uuid.uuid4()), "rating": "down"})
        return done, theirs, never

    done, theirs, never = anyio.run(rate)
    assert done["rating"] == "up" and done["feedback_id"] and done["config_id"]
    assert theirs == never and "answer" in theirs
    with db.tenant(tenants["a"]["tenant"]) as conn:
        row = conn.execute("SELECT rating FROM feedback WHERE feedback_id = %s", (done["feedback_id"],)).fetchone()
    assert row == ("up",)


def test_stdio_session_searches_and_ingests_idempotently(stack, tenants, tmp_path):
    settings, _ = stack
    key, tenant = tenants["a"]["key"], tenants["a"]["tenant"]
    notes = settings.ingest_root / tenant / "notes"
    notes.mkdir(parents=True)
    (notes / "glaciers.md").write_text("# Glaciers\n\nGlaciers carve U-shaped valleys as they grind downhill.\n")

    async def check() -> None:
        with (tmp_path / "stdio.log").open("w") as errlog:
            async with stdio_session(worker_env(settings), key, errlog) as session:
                assert {t.name for t in (await session.list_tools()).tools} == TOOL_NAMES
                collections = await call(session, "list_collections")
                assert collections["collections"] == [{"collection": "default", "documents": 3}]
                found = await call(session, "search", query=QUESTION, k=2)
                assert len(found["chunks"]) == 2 and found["chunks"][0]["document_id"] in tenants["a"]["docs"]
                first = await call(session, "ingest", source="notes", idempotency_key="glaciers-1")
                again = await call(session, "ingest", source="notes", idempotency_key="glaciers-1")
                assert again["job_id"] == first["job_id"] and (first["replayed"], again["replayed"]) == (False, True)
                assert (await _wait_job(session, first["job_id"]))["status"] == "succeeded"
                page = await call(session, "list_documents", limit=10)
                assert len(page["documents"]) == 4 and page["next_offset"] is None
                found = await call(session, "search", query="What shape do glaciers carve valleys into?", k=1)
                assert "U-shaped" in found["chunks"][0]["text"]

    anyio.run(check)


def test_tenants_never_see_each_other(stack, tenants):
    settings, url = stack
    a, b = tenants["a"], tenants["b"]
    a_doc = next(iter(a["docs"]))

    async def as_b(session) -> None:
        collections = await call(session, "list_collections")
        assert collections["collections"] == [{"collection": "default", "documents": 1}]
        listed = await call(session, "list_documents", limit=200)
        assert {d["document_id"] for d in listed["documents"]} == set(b["docs"])
        found = await call(session, "search", query=QUESTION, k=10)
        assert found["chunks"] and {c["document_id"] for c in found["chunks"]} <= set(b["docs"])
        answer = await call(session, "answer", question=QUESTION)
        assert {c["document_id"] for c in answer["citations"]} <= set(b["docs"])
        # Another tenant's ids read exactly like ids that never existed.
        guessed = str(uuid.uuid4())
        theirs = await call_error(session, "read_document", {"document_id": a_doc})
        never = await call_error(session, "read_document", {"document_id": guessed})
        assert theirs.replace(a_doc, "ID") == never.replace(guessed, "ID") and "no document" in theirs
        their_job = await call_error(session, "job_status", {"job_id": a["job"]})
        no_job = await call_error(session, "job_status", {"job_id": guessed})
        assert their_job.replace(a["job"], "ID") == no_job.replace(guessed, "ID") and "no job" in their_job
        await call_error(session, "ingest", {"source": f"../{a['tenant']}/notes"})
        uris = {str(r.uri) for r in (await session.list_resources()).resources}
        assert not any(d in u for d in a["docs"] for u in uris) and any(d in u for d in b["docs"] for u in uris)
        with pytest.raises(MCPError, match="no document"):
            await session.read_resource(f"sluice://documents/{a_doc}")

    async def check() -> None:
        async with http_session(url, b["key"]) as session:
            await as_b(session)
        async with stdio_session(worker_env(settings), b["key"], sys.stderr) as session:
            await call_error(session, "read_document", {"document_id": a_doc})
            assert set((await call(session, "list_documents"))["documents"][0].values()) & set(b["docs"])

    anyio.run(check)


MALFORMED = [
    ("search", {}, "query"),
    ("search", {"query": "bees", "k": 0}, "k"),
    ("search", {"query": "bees", "k": "many"}, "k"),
    ("search", {"query": "bees", "mode": "psychic"}, "mode"),
    ("search", {"query": "   "}, "question"),
    ("search", {"query": "bees", "filters": {"bogus": 1}}, "bogus"),
    ("search", {"query": "bees", "filters": "year > 2020"}, "filters"),
    ("answer", {"question": "x" * 5000}, "question"),
    ("read_document", {"document_id": "not-a-uuid"}, "no document"),
    ("read_document", {"document_id": str(uuid.uuid4()), "start": 10, "end": 5}, "empty"),
    ("list_documents", {"limit": 0}, "limit"),
    ("list_documents", {"offset": -1}, "offset"),
    ("ingest", {}, "exactly one"),
    ("ingest", {"files": [{"name": "x.md", "content_base64": "%%%"}]}, "base64"),
    ("job_status", {"job_id": "nope"}, "no job"),
    ("feedback", {"answer_id": "x", "rating": "meh"}, "rating"),
    ("no_such_tool", {}, "no_such_tool"),
]


def test_malformed_arguments_are_tool_errors_and_the_server_keeps_serving(stack, tenants):
    _, url = stack

    async def check() -> None:
        async with http_session(url, tenants["a"]["key"]) as session:
            for tool, arguments, says in MALFORMED:
                text = await call_error(session, tool, arguments)
                assert says in text and "Traceback" not in text, (tool, arguments, text)
            assert (await call(session, "list_collections"))["collections"][0]["documents"] >= 3

    anyio.run(check)


def test_http_needs_an_api_key_and_counts_calls(stack, tenants):
    _, url = stack
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream"}
    for auth in ({}, {"Authorization": "Bearer sk_nope_nope"}):
        refused = httpx.post(f"{url}/mcp", json=body, headers={**headers, **auth})
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer", refused.text
        assert "Authorization" in refused.json()["detail"] or "API key" in refused.json()["detail"]

    async def calls() -> None:
        async with http_session(url, tenants["a"]["key"]) as session:
            await call(session, "search", query=QUESTION)
            await call_error(session, "read_document", {"document_id": "nope"})

    anyio.run(calls)
    scraped = httpx.get(f"{url}/metrics").text
    assert (metric(scraped, "sluice_mcp_tool_calls_total", 'outcome="ok",tool="search"') or 0) >= 1
    assert (metric(scraped, "sluice_mcp_tool_calls_total", 'outcome="error",tool="read_document"') or 0) >= 1
    assert (metric(scraped, "sluice_mcp_tool_seconds_count", 'tool="search"') or 0) >= 1
    assert (metric(scraped, "sluice_http_requests_total", 'method="POST",route="/mcp",status="200"') or 0) >= 2


def test_standalone_http_server_serves_only_mcp(stack, tenants, tmp_path):
    """`sluice mcp --http`: the MCP endpoint under the API's admission, without the REST routes."""
    settings, _ = stack
    port = free_port()
    cmd = [sys.executable, "-m", "cli", "mcp", "--http", "--host", "127.0.0.1", "--port", str(port)]
    log = tmp_path / "mcp-http.log"
    proc = subprocess.Popen(cmd, env=worker_env(settings), stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(proc, url, log)
        assert (
            httpx.post(f"{url}/v1/query", json={"question": "bees"}, headers=_bearer(tenants["a"])).status_code == 404
        )

        async def check() -> dict:
            async with http_session(url, tenants["a"]["key"]) as session:
                return await call(session, "list_collections")

        [only] = anyio.run(check)["collections"]
        assert only["collection"] == "default" and only["documents"] >= len(tenants["a"]["docs"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _bearer(tenant: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant['key']}"}


def test_stdio_calls_spend_the_keys_rate_limit(stack, db):
    """Over stdio every call is admitted like an HTTP request: the token bucket refuses past the burst."""
    settings, _ = stack
    tenant = f"mcpc-{uuid.uuid4().hex[:8]}"
    create_tenant(db, tenant)
    env = {**worker_env(settings), "SLUICE_RATE_LIMIT_PER_S": "0.01", "SLUICE_RATE_LIMIT_BURST": "3"}

    async def check() -> str:
        async with stdio_session(env, create_key(db, tenant).secret, sys.stderr) as session:
            for _ in range(3):  # the start-up key check spends no token: three calls fit in a burst of 3
                await call(session, "list_collections")
            return await call_error(session, "list_collections", {})

    refused = anyio.run(check)
    assert "rate limit" in refused and "retry after" in refused and "429" in refused
