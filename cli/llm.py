"""`sluice llm serve`: a llama.cpp server on a packaged model, on loopback (the `llm` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.common import console
from sluice.settings import load_settings

app = typer.Typer(help="Local LLM servers (llama.cpp on packaged models; `make setup-llm`).", no_args_is_help=True)


def _pid_file(data_dir: Path, model: str) -> Path:
    return data_dir / f"llm-{Path(model).stem}.pid"


@app.command("serve")
def serve(
    model: Annotated[str, typer.Option(help="smollm2-135m | gemma3-270m | PATH to a .gguf file.")] = "smollm2-135m",
    port: Annotated[Optional[int], typer.Option(help="Port on 127.0.0.1 (default: a free one).")] = None,
    n_ctx: Annotated[int, typer.Option("--n-ctx", help="Context window in tokens.")] = 2048,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads (default: llama.cpp's).")] = None,
    detach: Annotated[bool, typer.Option(help="Leave the server running in the background and return.")] = False,
    stop: Annotated[bool, typer.Option(help="Stop the server of --model left running by --detach.")] = False,
) -> None:
    """Start llama.cpp's OpenAI-compatible server on MODEL, wait for its health check, print its base URL."""
    from tasks.llm.local import start_server

    settings = load_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    pid_file = _pid_file(settings.data_dir, model)
    if stop:
        _stop(pid_file, model)
        return
    log = settings.data_dir / f"llm-{Path(model).stem}.log"
    server = start_server(model, settings.data_dir, port, n_ctx, threads, log_path=log, detach=detach)
    console.print(f"{server.model} is served at {server.base_url} (log {log})", soft_wrap=True, highlight=False)
    print(server.base_url)
    if detach:
        pid_file.write_text(str(server.process.pid))
        console.print(f"stop it with: sluice llm serve --model {model} --stop", highlight=False)
        return
    try:
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def _stop(pid_file: Path, model: str) -> None:
    """Stop the server a previous --detach left running (its own session: signal the whole group)."""
    import os
    import signal
    import time

    if not pid_file.exists():
        console.print(f"no detached server for {model!r} ({pid_file} is absent)")
        return
    pid = int(pid_file.read_text().strip())
    if not _is_server(pid, model):  # the server ended (a reboot, a crash) and its pid may now be another's
        pid_file.unlink()
        console.print(f"no {model} server runs as process {pid} any more: removed its stale {pid_file}")
        return
    try:
        os.killpg(pid, signal.SIGTERM)
        for _ in range(100):
            os.killpg(pid, 0)
            time.sleep(0.1)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pid_file.unlink()
    console.print(f"stopped the {model} server (process group {pid})")


def _is_server(pid: int, model: str) -> bool:
    """Whether process `pid` leads its own group and is the llama.cpp server of `model` that --detach started."""
    import os

    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        leader = os.getpgid(pid) == pid
    except (OSError, ValueError):
        return False  # gone (or no /proc: then it is not signalled blind either)
    module = [i for i in range(len(args) - 1) if args[i : i + 2] == [b"-m", b"tasks.llm.llamacpp_server"]]
    alias = [args[i + 1] for i in range(len(args) - 1) if args[i] == b"--model_alias"]
    return leader and bool(module) and alias == [Path(model).stem.encode()]
