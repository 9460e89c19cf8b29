"""How much slower one embedding process runs when a second one runs beside it: the ceiling of 1 -> 2 worker scaling.

Each child loads the packaged MiniLM with one torch thread (as a worker process does), warms up, then times
`model.encode` of the same 256 covid_qa-sized texts (wall and CPU seconds). Per round: one child alone, then two
children at once (their encodes started together through a barrier file), order alternating. If two at once
take r times as long as one alone, two workers can at best do 2 / r times the work of one:

    PYTHONPATH=$PWD .venv/bin/python bench/core_contention.py [--rounds 3] [--texts 256]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(texts: int, go: str) -> None:
    import torch

    from sluice.config import EmbedderConfig
    from tasks.embed import get_embedder

    torch.set_num_threads(1)
    embedder = get_embedder(EmbedderConfig())
    embedder.warm_up()
    words = "the virus spread in the population and the study measured antibody responses over time".split()
    batch = [" ".join(words[(i + j) % len(words)] for j in range(180)) for i in range(texts)]
    embedder.encode(batch[:16])
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.01)
    wall, cpu = time.perf_counter(), time.process_time()
    embedder.encode(batch)
    print(json.dumps({"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}), flush=True)


def run(n: int, texts: int) -> list[dict]:
    """`n` children encoding at once; their timings."""
    with tempfile.TemporaryDirectory() as tmp:
        go = os.path.join(tmp, "go")
        cmd = [sys.executable, __file__, "--child", go, "--texts", str(texts)]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT) for _ in range(n)]
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        Path(go).touch()
        return [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--child", default=None)
    args = parser.parse_args()
    if args.child:
        child(args.texts, args.child)
        return
    rows = []
    for r in range(args.rounds):
        out = {}
        for n in (1, 2) if r % 2 == 0 else (2, 1):
            out[n] = run(n, args.texts)
        one = out[1][0]["wall_s"]
        two = max(t["wall_s"] for t in out[2])
        row = {"one_alone_s": round(one, 2), "two_at_once_s": [round(t["wall_s"], 2) for t in out[2]]}
        row |= {"slowdown": round(two / one, 3), "ceiling_2_workers": round(2 * one / two, 3)}
        row["cpu_s"] = {"alone": round(out[1][0]["cpu_s"], 2), "at_once": [round(t["cpu_s"], 2) for t in out[2]]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    median = statistics.median(r["ceiling_2_workers"] for r in rows)
    print(json.dumps({"cpus": os.cpu_count(), "median_ceiling_2_workers": median}, indent=2))


if __name__ == "__main__":
    main()
