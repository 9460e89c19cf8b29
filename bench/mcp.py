"""MCP `search` against REST `/v1/query` for the same queries: latency p50/p99 through one API process.

    PYTHONPATH=$PWD python bench/mcp.py [--n 100] [--rounds 2] [--workers 1]

Needs Redis on 127.0.0.1:6379 and `sluice db up`. Starts `sluice worker` and `sluice serve` (MCP at
/mcp beside /v1; answer cache off, limits off), ingests the sample corpus into tenant `bench-mcp`,
then alternates rounds, sequentially (c=1), of: REST `POST /v1/query`, MCP `search` (the official
client, `mcp.ClientSession` over streamable HTTP) and MCP `answer` (the very same work as the REST
call, so its ratio is the MCP layer's own cost), then REST `GET /v1/jobs/{id}` and MCP `job_status` for an
unknown id (no worker: the layer's cost alone). Every question is unique per request, so no path
hits a cache. Goal: MCP `search` p50 and p99 <= 1.2x REST.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

import anyio
import httpx

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder comes first on sys.path, where `mcp` would be this file, not the SDK.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.serving import bench_tenant, pct, question, served_env, start_stack, stop_stack  # noqa: E402
from sluice.settings import load_settings  # noqa: E402
from tests.mcp_support import call, http_session  # noqa: E402
from tests.serving_support import free_port  # noqa: E402

REDIS = "redis://127.0.0.1:6379/11"
# The last pair does no worker work (one lookup of an unknown job id): it shows the MCP layer's cost alone.
PATHS = ("rest /v1/query", "mcp search", "mcp answer", "rest GET job", "mcp job_status")


async def timed(fn, n: int) -> list[float]:
    """Latencies (ms) of n sequential calls."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def bench(url: str, key: str, n: int, rounds: int) -> dict[str, list[float]]:
    """Alternating rounds of the three paths; latencies per path."""
    lat: dict[str, list[float]] = {name: [] for name in PATHS}
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as rest:
        async with http_session(url, key) as session:

            async def rest_query() -> None:
                (await rest.post("/v1/query", json={"question": question()})).raise_for_status()

            async def rest_job() -> None:
                assert (await rest.get(f"/v1/jobs/{uuid.uuid4()}")).status_code == 404

            paths = {
                "rest /v1/query": rest_query,
                "mcp search": lambda: call(session, "search", query=question()),
                "mcp answer": lambda: call(session, "answer", question=question()),
                "rest GET job": rest_job,
                "mcp job_status": lambda: session.call_tool("job_status", {"job_id": str(uuid.uuid4())}),
            }
            for fn in paths.values():  # warm up: every path once per worker process, connections open
                await timed(fn, 8)
            for r in range(rounds):
                order = list(paths) if r % 2 == 0 else list(reversed(paths))
                for name in order:
                    lat[name] += await timed(paths[name], n)
    return lat


def report(lat: dict[str, list[float]]) -> None:
    """p50/p99 per path, and as a multiple of its REST counterpart (the trivial pair: the REST job lookup)."""
    print(f"{'path':16s} {'n':>5s} {'p50 ms':>8s} {'p99 ms':>8s} {'p50 x REST':>11s} {'p99 x REST':>11s}")
    for name, values in lat.items():
        base = lat["rest GET job" if "job" in name else "rest /v1/query"]
        p50, p99 = statistics.median(values), pct(values, 99)
        print(
            f"{name:16s} {len(values):5d} {p50:8.1f} {p99:8.1f} {p50 / statistics.median(base):11.2f} "
            f"{p99 / pct(base, 99):11.2f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100, help="Requests per path per round.")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    settings = load_settings()
    db, _, _, key = bench_tenant(settings, "bench-mcp")
    port = free_port()
    worker, api = start_stack(served_env(REDIS), args.workers, port, Path("/tmp/sluice-bench-mcp"))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(url)
        report(anyio.run(bench, url, key, args.n, args.rounds))
    finally:
        stop_stack(api, worker)
        db.close()


def wait_up(url: str) -> None:
    """Wait for /readyz with a live worker."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            ready = httpx.get(f"{url}/readyz").json()
            if ready["ready"] and ready["checks"]["workers"].startswith("ok"):
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(1)
    raise SystemExit("API or worker not ready; see /tmp/sluice-bench-mcp/*.log")


if __name__ == "__main__":
    main()
