"""The multi-host harness itself (bench/netns.py): hosts are isolated, and nothing of a run outlives it.

A run that crashed (its process gone) leaves namespaces with live processes, a bridge and folders
behind; the next run's start removes all of it, and leaves a live run's alone. Without root, the
multi-host test fails (it is not silently skipped) unless SLUICE_SKIP_NETNS_TESTS=1 opts out.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from bench.netns import HOSTS_PARENT, PREFIX, STATE_DIR, Network, remove_stale
from tests.reliability.test_multi_host import OPT_OUT, require_namespaces


def leftovers(run_id: str) -> list[str]:
    """What of run `run_id` still exists: namespaces, links, folder, marker."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    found = [n for n in names if n.startswith(f"{PREFIX}{run_id}-")]
    found += [f"link {PREFIX}{run_id}" for line in links.splitlines() if f" {PREFIX}{run_id}" in line]
    found += [str(p) for p in (HOSTS_PARENT / f"sluice-hosts-{run_id}", STATE_DIR / run_id) if p.exists()]
    return found


def test_hosts_are_isolated_and_a_closed_network_leaves_nothing():
    require_namespaces()
    with Network(["a", "b"], users={"b": 65534}) as net:
        a, b = net["a"], net["b"]
        (a.data / "secret").write_text("a's")
        probe = f"id -u; hostname; ls -A {a.root}; test -e {a.data}/secret || echo gone"
        seen = b.run(["sh", "-c", probe], b.base_env())
        assert seen.stdout.split() == ["65534", "b", "gone"], seen
        sleeper = a.spawn([sys.executable, "-c", "import time; time.sleep(600)"], a.base_env(), "sleep.log")
        assert in_namespace(a, sleeper.pid)
        run_id = net.run_id
    assert sleeper.wait(timeout=10) == -9
    assert leftovers(run_id) == []


def test_a_crashed_run_is_removed_by_the_next_and_a_live_one_is_not():
    require_namespaces()
    crashed = Network(["a"]).__enter__()  # never closed, as if its process had been killed
    sleeper = crashed["a"].spawn([sys.executable, "-c", "import time; time.sleep(600)"], {}, "sleep.log")
    assert in_namespace(crashed["a"], sleeper.pid)
    (STATE_DIR / crashed.run_id).write_text(str(dead_pid()))
    assert leftovers(crashed.run_id)
    with Network(["x"]) as live:  # its start removes the crashed run, processes included
        assert leftovers(crashed.run_id) == [] and sleeper.wait(timeout=10) == -9
        assert live.run_id not in remove_stale() and leftovers(live.run_id)  # a live run is left alone
    assert leftovers(live.run_id) == []


def in_namespace(host, pid: int, timeout: float = 10) -> bool:
    """Whether `pid` shows up in the host's namespace (`ip netns exec` enters it a moment after starting)."""
    deadline = time.monotonic() + timeout
    while pid not in host.pids():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_without_root_the_multi_host_test_fails_unless_opted_out(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.delenv(OPT_OUT, raising=False)
    with pytest.raises(pytest.fail.Exception, match="need root.*or set SLUICE_SKIP_NETNS_TESTS=1 to skip"):
        require_namespaces()
    monkeypatch.setenv(OPT_OUT, "1")
    with pytest.raises(pytest.skip.Exception, match="skipped because SLUICE_SKIP_NETNS_TESTS=1"):
        require_namespaces()
