"""Refuse every connection and name lookup beyond loopback and Unix sockets.

Installed in the pytest process by tests/conftest.py, and in every Python subprocess of a test run
(workers, `sluice serve`, CLI runs) by the sitecustomize.py next to this file, which Python imports
at start-up when this folder is on PYTHONPATH.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable

Record = Callable[[str], None]

# Refusals in this process (pytest's own); subprocesses record theirs in a file, see file_recorder.
attempts: list[str] = []


def is_local_address(address: object) -> bool:
    """True for Unix sockets and loopback hosts; everything else is outbound."""
    if isinstance(address, (str, bytes)):
        return True  # AF_UNIX path
    host = address[0] if isinstance(address, tuple) else address
    if host in ("localhost", "", None):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def install(record: Record) -> None:
    """Patch socket connect/connect_ex/getaddrinfo: record and refuse anything outbound."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def refuse(what: str) -> OSError:
        record(what)
        return OSError(f"network guard: outbound connection to {what} refused in tests")

    def connect(self, address):
        if self.family != socket.AF_UNIX and not is_local_address(address):
            raise refuse(repr(address))
        return real_connect(self, address)

    def connect_ex(self, address):
        if self.family != socket.AF_UNIX and not is_local_address(address):
            raise refuse(repr(address))
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and not is_local_address((host.decode() if isinstance(host, bytes) else host,)):
            record(f"resolve {host!r}")
            raise socket.gaierror(f"network guard: name lookup of {host!r} refused in tests")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo


def file_recorder(path: str) -> Record:
    """Append each refused attempt, with this process id, to a file the test run checks."""

    def record(what: str) -> None:
        with open(path, "a", encoding="utf-8") as log:  # one short write per line: appends do not interleave
            log.write(f"pid {os.getpid()}: {what}\n")

    return record
