"""Answers' ids and records, and feedback on them, end to end: real Redis, `sluice worker`, Postgres, HTTP, CLI.

The loop: answer → feedback → `sluice feedback export` → `sluice eval` on the exported gold set.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections import Counter

import pytest

from serving.answers import answer_id_for
from tests.conftest import SAMPLE
from tests.serving_support import keyed_tenant, run_job, wait_job

RETURNS = "How many days do I have to return an unridden bike?"
BEES = "# Bees\n\nHoneybees communicate the location of flowers to their hive mates with a waggle dance.\n"
POSTED: Counter = Counter()  # ratings this module's API accepted: what `sluice status` must report

pytestmark = pytest.mark.usefixtures("no_champion_left")


@pytest.fixture(scope="module")
def api(stack_settings, start_stack, tmp_path_factory):
    """A worker and an API whose ingest root holds tenant A's named source."""
    return start_stack(stack_settings("feedback-test", ingest_root=tmp_path_factory.mktemp("ingest-root")))


@pytest.fixture(scope="module")
def tenants(db, api):
    """Tenant A holds the sample corpus (a named source), tenant B one uploaded file."""
    out = {name: keyed_tenant(db, f"fb{name}") for name in ("a", "b")}
    (api.settings.ingest_root / out["a"][0]).symlink_to(SAMPLE, target_is_directory=True)
    upload = [{"name": "bees.md", "content_base64": base64.b64encode(BEES.encode()).decode()}]
    for name, job in (("a", {"kind": "ingest", "source": "corpus"}), ("b", {"kind": "ingest", "files": upload})):
        with api.client(out[name][1]) as client:
            run_job(client, job)
    return out


def rate(client, body: dict, **headers: str):
    """POST /v1/feedback; count what was accepted."""
    r = client.post("/v1/feedback", json=body, headers=headers)
    if r.status_code == 201 and r.headers.get("idempotent-replayed") != "true":
        POSTED[body["rating"]] += 1
    return r


def record(db, tenant: str, answer_id: str) -> dict | None:
    """The stored record of an answer, read under the tenant's RLS."""
    from psycopg.rows import dict_row

    with db.tenant(tenant) as conn:
        cur = conn.cursor(row_factory=dict_row)
        return cur.execute("SELECT * FROM answers WHERE answer_id = %s", (answer_id,)).fetchone()


def span_of(db, tenant: str, document: str, first: str, last: str) -> tuple[int, int]:
    """The span of the stored (parsed) text of `document` from `first` to the end of `last`."""
    with db.tenant(tenant) as conn:
        text = conn.execute("SELECT text FROM documents WHERE source_id = %s", (document,)).fetchone()[0]
    start = text.index(first)
    return start, text.index(last, start) + len(last)


def test_answer_id_present_and_stable(api, tenants, db):
    tenant, key = tenants["a"]
    question = f"How long is the carbon frame warranty? ({uuid.uuid4().hex[:6]})"
    with api.client(key) as client:
        sync = client.post("/v1/query", json={"question": RETURNS}, headers={"Idempotency-Key": uuid.uuid4().hex})
        assert sync.status_code == 200, sync.text
        first = sync.json()
        replay = client.post(
            "/v1/query",
            json={"question": RETURNS},
            headers={"Idempotency-Key": sync.request.headers["idempotency-key"]},
        )
        cached = client.post("/v1/query", json={"question": RETURNS}).json()
        job = client.post("/v1/jobs", json={"kind": "query", "question": question}).json()["job_id"]
        done = wait_job(client, job)
        polled = client.get(f"/v1/jobs/{job}").json()
        with client.stream("POST", "/v1/query", json={"question": question + " now", "stream": True}) as r:
            events = [b for b in r.read().decode().split("\n\n") if b.startswith("event: done")]
    answer_id = first["answer_id"]
    assert str(uuid.UUID(answer_id)) == answer_id and answer_id == answer_id_for(first["task_id"])
    assert replay.json()["answer_id"] == answer_id and replay.headers["idempotent-replayed"] == "true"
    assert cached["cached"] is True and cached["answer_id"] == answer_id  # a cache hit is the same answer
    assert done["result"]["answer_id"] == polled["result"]["answer_id"] == answer_id_for(job)
    streamed = json.loads(events[0].split("data: ", 1)[1])
    assert streamed["answer_id"] == answer_id_for(streamed["task_id"])
    stored = record(db, tenant, answer_id)
    assert stored["question"] == RETURNS and stored["answer"] == first["answer"] and not stored["rated"]
    assert stored["config_id"] == first["config_id"] and stored["index_id"] == first["index_id"]
    assert stored["citations"] == [{k: c[k] for k in ("document", "document_id", "span")} for c in first["citations"]]
    assert record(db, tenant, done["result"]["answer_id"])["question"] == question
    assert record(db, tenant, streamed["answer_id"])["question"] == question + " now"


def test_bad_feedback_is_422_naming_the_field(api, tenants):
    with api.client(tenants["a"][1]) as client:
        answer_id = client.post("/v1/query", json={"question": RETURNS}).json()["answer_id"]
        bad = rate(client, {"answer_id": answer_id, "rating": "meh"})
        assert bad.status_code == 422
        [error] = bad.json()["detail"]
        assert error["loc"] == ["body", "rating"] and "'up' or 'down'" in error["msg"]
        blank = rate(client, {"answer_id": answer_id, "rating": "up", "correction": "   "})
        assert blank.status_code == 422 and blank.json()["detail"][0]["loc"] == ["body", "correction"]
        missing = rate(client, {"answer_id": answer_id, "rating": "up", "evidence": {"document": "nope.md"}})
        assert missing.status_code == 422
        assert "evidence.document 'nope.md' is not one of your documents" in missing.json()["detail"]
        past = {"document": "returns-policy.md", "span": [0, 10**9]}
        far = rate(client, {"answer_id": answer_id, "rating": "down", "evidence": past})
        assert far.status_code == 422 and "evidence.span ends at 1000000000, past the end" in far.json()["detail"]
    assert POSTED == Counter()  # nothing was stored


def test_other_tenants_answer_id_is_404_like_an_unknown_one(api, tenants, db):
    with api.client(tenants["a"][1]) as a:
        answer_id = a.post("/v1/query", json={"question": "What is the restocking fee?"}).json()["answer_id"]
    with api.client(tenants["b"][1]) as b:
        theirs = rate(b, {"answer_id": answer_id, "rating": "down", "correction": "wrong"})
        unknown = rate(b, {"answer_id": str(uuid.uuid4()), "rating": "down", "correction": "wrong"})
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.content == unknown.content and "answer_id" in theirs.json()["detail"]
    assert record(db, tenants["a"][0], answer_id)["rated"] is False  # untouched


GRID = """name: feedback-loop
tenant: fb-eval-{suffix}
corpus: {{kind: files, path: data/sample/corpus}}
chunkers: [{{kind: recursive, chunk_size: 300, chunk_overlap: 30}}]
retrieval: [{{mode: dense, k: 10}}]
routing: [{{policy: single}}]
objective: {{metric: hit_at_5, direction: maximise}}
"""


def evaluate(eval_cli, tmp_path, gold) -> dict[str, dict]:
    """`sluice eval` of a one-config grid on the sample corpus with `gold`: each item's scores, by item id."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID.format(suffix=uuid.uuid4().hex[:8]))
    result = eval_cli("eval", grid, "--gold", gold, "--no-promote", "--no-rollout")
    assert result.exit_code == 0 and "full table: " in result.output, result.output
    [per_question] = tmp_path.glob("artifacts/*/artifacts/per_question.json")  # one config: one run
    table = json.loads(per_question.read_text())
    return {row[0]: dict(zip(table["columns"], row, strict=True)) for row in table["data"]}


def test_feedback_round_trip_through_export_and_eval(api, tenants, db, eval_cli, tmp_path):
    tenant, key = tenants["a"]
    with api.client(key) as client:
        good = client.post("/v1/query", json={"question": RETURNS}).json()
        wrong = client.post(
            "/v1/query", json={"question": "What if an item arrives damaged or develops a fault?"}
        ).json()
        idem = {"Idempotency-Key": uuid.uuid4().hex}
        up = rate(client, {"answer_id": good["answer_id"], "rating": "up"}, **idem)
        assert up.status_code == 201, up.text
        assert rate(client, {"answer_id": good["answer_id"], "rating": "up"}, **idem).content == up.content
        start, end = span_of(db, tenant, "returns-policy.md", "If an item arrives damaged", "the best outcome.")
        named = {"document": "returns-policy.md", "span": [start, end]}
        down = {"answer_id": wrong["answer_id"], "rating": "down", "correction": "We do.", "evidence": named}
        assert rate(client, down).status_code == 201
        assert rate(client, {"answer_id": wrong["answer_id"], "rating": "down"}).status_code == 201
    assert record(db, tenant, good["answer_id"])["rated"] is True
    gold = tmp_path / "feedback.jsonl"
    exported = eval_cli("feedback", "export", "--tenant", tenant, "--out", gold)
    assert exported.exit_code == 0, exported.output
    assert "2 gold items" in exported.output and "skipped: 1 down rating" in exported.output
    items = {item["origin"]["answer_id"]: item for item in map(json.loads, gold.read_text().splitlines())}
    cited = [{"source_id": c["document"], "start": c["span"][0], "end": c["span"][1]} for c in good["citations"]]
    assert items[good["answer_id"]]["evidence"] == cited and items[good["answer_id"]]["question"] == RETURNS
    assert items[wrong["answer_id"]]["evidence"] == [{"source_id": "returns-policy.md", "start": start, "end": end}]
    assert items[wrong["answer_id"]]["reference_answer"] == "We do."
    scores = evaluate(eval_cli, tmp_path, gold)
    rated_up, named_span = scores[f"answer-{good['answer_id']}"], scores[items[wrong["answer_id"]]["id"]]
    # The up-rated answer's cited spans are its gold evidence: the retrieval that found them scores them relevant.
    assert rated_up["hit_at_5"] == 1.0 and rated_up["mrr"] == 1.0 and rated_up["evidence_recall_at_10"] > 0.5
    assert named_span["hit_at_10"] == 1.0 and named_span["evidence_recall_at_10"] > 0


def test_status_shows_the_share_of_down_ratings(api, tenants, eval_cli):
    from sluice.config import PipelineConfig

    with api.client(tenants["b"][1]) as client:
        answer = client.post("/v1/query", json={"question": "How do bees find flowers?"}).json()
        assert rate(client, {"answer_id": answer["answer_id"], "rating": "down"}).status_code == 201
    assert answer["config_id"] == PipelineConfig().config_id  # every answer of this module: one config
    shown = eval_cli("status", "--url", api.url, "--interval", "0.1")
    assert shown.exit_code == 0, shown.output
    total = POSTED["up"] + POSTED["down"]
    line = f"{POSTED['down'] / total:.1%} down of {total} ratings"
    assert f"feedback {answer['config_id']}" in shown.output and line in shown.output, shown.output
