"""`sluice demo-api`: the sample answered through the API and a real worker, left running or stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.common import console
from sluice.errors import SluiceError
from sluice.settings import load_settings

app = typer.Typer()
# What an orchestrator gives a stopping process (Kubernetes' default terminationGracePeriodSeconds).
STOP_GRACE_S = 30


@app.command("demo-api")
def demo_api(
    port: Annotated[int, typer.Option(help="API port.")] = 8000,
    detach: Annotated[bool, typer.Option(help="Leave API and worker running in the background and return.")] = False,
    stop: Annotated[bool, typer.Option(help="Stop an API and worker left running by --detach.")] = False,
    llm: Annotated[
        Optional[str],
        typer.Option(help="local: answer with two routed local models (llama.cpp, configs/llm-local.yaml)."),
    ] = None,
) -> None:
    """Answer the sample questions through the API and a real worker, then keep both up for curl."""
    from sluice.settings import PROJECT_ROOT

    settings = load_settings()
    pid_file = settings.data_dir / "demo-api.pids"
    _stop_detached(pid_file)
    if stop:
        return
    key = _demo_key(settings)
    servers, env = _local_llm(settings, detach, llm)
    procs, where = _spawn(settings, port, detach, env)
    procs += [server.process for server in servers]
    if detach:
        pid_file.write_text(" ".join(str(p.pid) for p in procs))
    try:
        _demo_requests(
            f"http://{settings.api_host}:{port}", key, PROJECT_ROOT / "data" / "sample" / "gold.jsonl", where, bool(llm)
        )
        _print_try(settings, port, key, detach)
        if not detach:
            procs[1].wait()
    except KeyboardInterrupt:
        pass
    except BaseException:
        _stop_detached(pid_file)
        raise
    finally:
        if not detach:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=60)


def _demo_key(settings) -> str:
    """Migrate, create the tenant `demo`, and return a new API key of it."""
    from serving.auth import create_key
    from sluice.db import Database, create_tenant, migrate

    migrate(settings)
    with Database(settings) as db:
        create_tenant(db, "demo", "Demo tenant")
        return create_key(db, "demo").secret


def _local_llm(settings, detach: bool, llm: str | None) -> tuple[list, dict[str, str]]:
    """Start the two model servers of configs/llm-local.yaml on its ports; the servers, and the env serving them."""
    from urllib.parse import urlsplit

    if llm is None:
        return [], {}
    if llm != "local":
        raise SluiceError(f"--llm {llm!r} is not known: use --llm local (or leave it out for the extractive answerer)")

    from sluice.config import load_config
    from sluice.settings import PROJECT_ROOT
    from tasks.llm.local import start_server

    path = PROJECT_ROOT / "configs" / "llm-local.yaml"
    servers = []
    try:
        for tier in load_config(path).generator.tiers.values():
            port = urlsplit(tier.replicas[0]).port
            console.print(f"starting {tier.model} on port {port} …", highlight=False)
            log = settings.data_dir / f"llm-{tier.model}.log"
            # One thread each: two servers, and llama.cpp's spinning threads slow to a crawl when they outnumber cores.
            server = start_server(tier.model, settings.data_dir, port, threads=1, log_path=log, detach=detach)
            servers.append(server)
    except BaseException:
        for server in servers:
            server.stop()
        raise
    from serving.worker import QUERY_LIMIT_S

    # The champion, if eval-demo promoted one, would outrank the configured default: serve this config.
    # The API waits for a model's answer as long as the worker may take (the default 30 s suits extractive).
    env = {"SLUICE_CONFIG_PATH": str(path), "SLUICE_SERVE_CHAMPION": "false"}
    return servers, {**env, "SLUICE_QUERY_TIMEOUT_S": str(QUERY_LIMIT_S)}


def _spawn(settings, port: int, detach: bool, extra_env: dict[str, str] | None = None) -> tuple[list, str]:
    """Start `sluice worker` and `sluice serve`; the processes, and where their output goes."""
    import os
    import subprocess
    import sys

    from sluice.settings import PROJECT_ROOT

    root = _demo_ingest_root(settings.data_dir, PROJECT_ROOT / "data" / "sample")
    env = dict(os.environ, SLUICE_INGEST_ROOT=str(root), **(extra_env or {}))
    cli = [sys.executable, "-m", "cli"]
    logs = {name: settings.data_dir / f"demo-api-{name}.log" for name in ("worker", "serve")}

    def spawn(name: str, args: list[str]) -> subprocess.Popen:
        if not detach:
            return subprocess.Popen(cli + args, env=env)
        # Detached: own session and log files, so they outlive this command (and `make demo`).
        with logs[name].open("wb") as log:
            return subprocess.Popen(cli + args, env=env, start_new_session=True, stdout=log, stderr=log)

    procs = [spawn("worker", ["worker", "--loglevel", "WARNING"]), spawn("serve", ["serve", "--port", str(port)])]
    return procs, f"see {logs['worker']} and {logs['serve']}" if detach else "see the output above"


def _demo_ingest_root(data_dir: Path, sample: Path) -> Path:
    """An ingest root whose folder for tenant `demo` is the sample (named sources are per tenant)."""
    root = data_dir / "demo-ingest"
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "demo").is_symlink():
        (root / "demo").symlink_to(sample, target_is_directory=True)
    return root


def _print_try(settings, port: int, key: str, detach: bool) -> None:
    """The curl line that works against the running API, the console's URL and key, and how to stop them."""
    import json

    base = f"http://{settings.api_host}:{port}"
    console.print("\nAPI and worker are running; try:" + ("" if detach else " (Ctrl-C stops both)"))
    body = json.dumps({"question": "How long is the warranty on a carbon fibre frame?"})
    print(f"curl -s -H 'Authorization: Bearer {key}' -H 'content-type: application/json' -d '{body}' {base}/v1/query")
    if detach:
        console.print("stop them with: sluice demo-api --stop")
    print(f"\nWeb console: {base}/console   (API docs: {base}/docs)\nSign in with this API key: {key}")


def _stop_detached(pid_file) -> None:
    """Stop an API and worker a previous `demo-api --detach` left running: SIGTERM, then SIGKILL after a grace."""
    import signal

    if not pid_file.exists():
        return
    groups = [int(pid) for pid in pid_file.read_text().split() if pid.isdigit()]
    for group in groups:
        _signal_group(group, signal.SIGTERM)
    for group in _still_running(groups, STOP_GRACE_S):
        console.print(f"[yellow]process group {group} still running {STOP_GRACE_S} s after SIGTERM: killed[/]")
        _signal_group(group, signal.SIGKILL)
    _still_running(groups, 5)
    pid_file.unlink()
    console.print(f"stopped the demo API and worker (process groups {' '.join(map(str, groups))})")


def _still_running(pids: list[int], seconds: float) -> list[int]:
    """Wait up to `seconds` for these processes to end; those still running."""
    import time

    deadline = time.monotonic() + seconds
    while (running := [p for p in pids if _running(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return running


def _signal_group(group: int, sig: int) -> None:
    import os

    try:
        os.killpg(group, sig)
    except (ProcessLookupError, PermissionError):  # gone already, or the pid is now someone else's
        pass


def _running(pid: int) -> bool:
    """True while `pid` runs; a zombie (exited, not yet reaped by its new parent) has stopped."""
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _job_outcome(status: dict) -> str:
    """An ingest job's outcome in one line: its counts, or its error."""
    result = status.get("result") or {}
    if status["status"] != "succeeded" or "ingested" not in result:
        return f"{status['status']}: {status.get('error') or result}"
    counts = ", ".join(f"{result[k]} {k}" for k in ("ingested", "updated", "unchanged", "failed", "chunks"))
    return f"succeeded ({counts})"


def _demo_requests(base: str, key: str, gold, where: str, stream: bool = False) -> None:
    import json
    import time

    import httpx

    client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=120)
    deadline, last = time.monotonic() + 180, "no answer"
    while True:
        try:
            checks = client.get("/readyz").json()
            if checks["ready"]:
                break
            last = str(checks.get("checks"))
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            raise SluiceError(
                f"the demo API at {base} was not ready after 180 s (last /readyz: {last}); {where}, "
                "then re-run `sluice demo-api --detach` (a port in use: pass --port)"
            )
        time.sleep(1)
    job = client.post("/v1/jobs", json={"kind": "ingest", "source": "corpus"}).json()["job_id"]
    while (status := client.get(f"/v1/jobs/{job}").json())["status"] not in ("succeeded", "failed"):
        time.sleep(0.5)
    console.print(f"ingest job {job}: {_job_outcome(status)}", soft_wrap=True, highlight=False)
    for line in gold.read_text().splitlines():
        question = json.loads(line)["question"]
        if stream:
            _stream_one(client, question)
            continue
        body = client.post("/v1/query", json={"question": question}).json()
        console.print(f"[bold]Q:[/] {question}\n[bold]A:[/] {body.get('answer', body)}\n")


def _stream_one(client, question: str) -> None:
    """Ask with `stream: true`: print the tokens as the SSE events arrive, then the model, tier and cost."""
    import json

    console.print(f"[bold]Q:[/] {question}\n[bold]A:[/] ", end="")
    event, done = "", {}
    with client.stream("POST", "/v1/query", json={"question": question, "stream": True}) as resp:
        for line in resp.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "token":
                print(json.loads(line[6:])["text"], end="", flush=True)
            elif line.startswith("data: ") and event in ("done", "error"):
                done = {**json.loads(line[6:]), "event": event}
    gen = done.get("generation") or {}
    facts = f"model {gen.get('model')} (tier {gen.get('tier')}, {gen.get('route', {}).get('reason', '')})"
    cost = f"TTFT {gen.get('ttft_ms', 0):.0f} ms, {gen.get('completion_tokens')} tokens, ${gen.get('cost_usd', 0):.8f}"
    if gen.get("attempts"):
        cost += f"\n   after {len(gen['attempts'])} failed attempt(s), the first: {gen['attempts'][0]}"
    console.print(f"\n   {facts}, {cost}\n" if done.get("event") == "done" else f"\n   {done}\n", highlight=False)
