"""The network guard (tests/netguard) fires: in the pytest process, and in a subprocess started with the
environment every test worker and `sluice serve` gets (tests.serving_support.worker_env), which loads it
through sitecustomize. The address is from TEST-NET-1 (RFC 5737): never routed, nothing leaves anyway."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.netguard import netguard
from tests.serving_support import worker_env

OUTBOUND = ("192.0.2.1", 443)


@pytest.fixture()
def forget_refusals():
    """Drop the refusals this test provokes on purpose, so the autouse guard check passes."""
    log = Path(os.environ["NETGUARD_LOG"])
    start, text = len(netguard.attempts), log.read_text()
    yield
    del netguard.attempts[start:]
    log.write_text(text)


def test_guard_refuses_outbound_in_this_process(forget_refusals):
    start = len(netguard.attempts)
    with socket.socket() as sock, pytest.raises(OSError, match="network guard: outbound connection"):
        sock.connect(OUTBOUND)
    with pytest.raises(socket.gaierror, match="network guard"):
        socket.create_connection(("huggingface.co", 443), timeout=2)
    assert netguard.attempts[start:] == [repr(OUTBOUND), "resolve 'huggingface.co'"]
    with socket.socket() as server:  # loopback still works
        server.bind(("127.0.0.1", 0))
        server.listen()
        socket.create_connection(server.getsockname(), timeout=2).close()


def test_guard_refuses_outbound_in_a_worker_like_subprocess(settings, forget_refusals):
    log = Path(os.environ["NETGUARD_LOG"])
    before = log.read_text()
    code = f"import socket; socket.socket().connect({OUTBOUND!r})"
    done = subprocess.run(
        [sys.executable, "-c", code], env=worker_env(settings), capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0 and "network guard: outbound connection" in done.stderr, done.stderr
    new = log.read_text()[len(before) :].splitlines()
    assert len(new) == 1 and new[0].endswith(f": {OUTBOUND!r}"), new  # recorded in the run's file


def test_guard_allows_only_the_subnet_a_test_allowed():
    """The multi-host test's exception: its own private subnet while it exists, nothing around it."""
    assert not netguard.is_local_address(("10.231.7.10", 5432))
    netguard.allow("10.231.7.0/24")
    try:
        assert netguard.is_local_address(("10.231.7.10", 5432)) and netguard.is_local_address(("10.231.7.1",))
        assert not netguard.is_local_address(("10.231.8.10", 5432))  # the neighbouring /24
        assert not netguard.is_local_address(OUTBOUND)
    finally:
        netguard.disallow("10.231.7.0/24")
    assert not netguard.is_local_address(("10.231.7.10", 5432))
    for wide in ("0.0.0.0/0", "10.0.0.0/8", "192.0.2.0/24", "169.254.0.0/16", "8.8.8.0/24", "fd00::/64"):
        with pytest.raises(ValueError, match="only a private IPv4 subnet"):
            netguard.allow(wide)
    assert netguard.allowed == []


def test_guard_in_a_subprocess_allows_only_its_netguard_allow(settings, forget_refusals):
    """NETGUARD_ALLOW lets a host of the multi-host test reach its subnet; outbound stays refused."""
    env = {**worker_env(settings), netguard.ALLOW_ENV: "10.231.7.0/24"}
    code = "import netguard as g; print(g.is_local_address(('10.231.7.10', 1)), g.is_local_address(('10.231.8.1', 1)))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["True", "False"], done.stderr
    refused = f"import socket; socket.socket().connect({OUTBOUND!r})"
    done = subprocess.run([sys.executable, "-c", refused], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "network guard: outbound connection" in done.stderr, done.stderr
    log = Path(os.environ["NETGUARD_LOG"])
    before = log.read_text()
    env[netguard.ALLOW_ENV] = "0.0.0.0/0"  # a wider subnet: refused and recorded; the guard stays on
    done = subprocess.run([sys.executable, "-c", refused], env=env, capture_output=True, text=True, timeout=60)
    assert "only a private IPv4 subnet" in done.stderr and "network guard: outbound connection" in done.stderr
    new = log.read_text()[len(before) :].splitlines()
    assert len(new) == 2 and new[0].endswith("NETGUARD_ALLOW '0.0.0.0/0' refused"), new
