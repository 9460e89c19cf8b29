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
