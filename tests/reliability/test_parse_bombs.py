"""A PDF decompression bomb uploaded through the API costs one document, not the Celery worker that ingests it.

The worker here lets the bomb past the cheap pre-check (SLUICE_MAX_UNZIPPED_BYTES raised) so that what
stops it is the parse process's memory limit: the worker process must not grow, must not die, and must
answer the next jobs.
"""

from __future__ import annotations

import base64
import os

import pytest

from serving.celery_app import create_celery
from tests.reliability.conftest import make_tenant
from tests.reliability.pdfbomb import font_bomb
from tests.serving_support import wait_job

MIB = 1024 * 1024
PARSE_MEMORY = 1024 * MIB
HIVE = "# Hive\n\nForager bees carry pollen home in baskets on their hind legs.\n"


def files(*named: tuple[str, bytes]) -> dict:
    return {"kind": "ingest", "files": [{"name": n, "content_base64": base64.b64encode(d).decode()} for n, d in named]}


@pytest.fixture(scope="module")
def bomb_stack(rel_settings, start_stack):
    """One worker process whose parser is held to 1 GiB and whose pre-check lets a 1 GiB font through."""
    bounds = {"max_unzipped_bytes": 1 << 40, "parse_memory_bytes": PARSE_MEMORY}
    stack = start_stack(rel_settings, worker_settings=rel_settings.model_copy(update=bounds))
    return stack, stack.worker_log


def _pool_pid(settings) -> int:
    stats = create_celery(settings).control.inspect(timeout=5).stats() or {}
    [pid] = [pid for s in stats.values() for pid in s["pool"]["processes"]]
    return pid


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_worker_survives_a_pdf_bomb_and_answers_the_next_jobs(bomb_stack, rel_settings, db):
    api, log = bomb_stack
    tenant, key = make_tenant(db)
    with api.client(key, timeout=120) as client:
        warm = client.post("/v1/jobs", json=files(("warm.pdf", font_bomb(1, "Drones do not sting.")))).json()
        assert wait_job(client, warm["job_id"], timeout=600)["status"] == "succeeded"
        pid = _pool_pid(rel_settings)
        before = _rss(pid)
        job = client.post("/v1/jobs", json=files(("bomb.pdf", font_bomb(1024)), ("hive.md", HIVE.encode()))).json()
        result = wait_job(client, job["job_id"], timeout=600)
        assert result["status"] == "succeeded", result
        body = result["result"]
        assert (body["ingested"], body["failed"]) == (1, 1), body
        [error] = body["errors"]
        assert error.startswith("bomb.pdf: parse failed") and "SLUICE_PARSE_MEMORY_BYTES" in error, error
        assert str(PARSE_MEMORY) in error
        assert _pool_pid(rel_settings) == pid, "the worker process was replaced"
        grown = _rss(pid) - before
        assert grown < 200 * MIB, f"the worker process grew by {grown / MIB:.0f} MiB"

        answer = client.post("/v1/query", json={"question": "How do bees carry pollen home?"})
        assert answer.status_code == 200 and "baskets" in answer.json()["answer"], answer.text
        again = client.post("/v1/jobs", json=files(("drones.md", b"# Drones\n\nDrones mate with queens.\n"))).json()
        assert wait_job(client, again["job_id"], timeout=600)["result"]["ingested"] == 1
    assert "WorkerLostError" not in log.read_text()
