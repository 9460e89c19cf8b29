"""Refuse every connection and name lookup beyond loopback and Unix sockets.

Installed in the pytest process by tests/conftest.py, and in every Python subprocess of a test run
(workers, `sluice serve`, CLI runs) by the sitecustomize.py next to this file, which Python imports
at start-up when this folder is on PYTHONPATH.

One exception, made by the multi-host test (tests/reliability/test_multi_host.py): the private subnet
of the bridge it builds between network namespaces (bench/netns.py) is allowed with `allow()` while
that network exists, in this process, and through NETGUARD_ALLOW in the processes of its hosts. Only
a private (RFC 1918) network of at most a /16 can be allowed; every other address stays refused.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable

Record = Callable[[str], None]

# Refusals in this process (pytest's own); subprocesses record theirs in a file, see file_recorder.
attempts: list[str] = []
# Private subnets a test built itself and allowed for its lifetime (allow/disallow).
allowed: list[ipaddress.IPv4Network] = []
ALLOW_ENV = "NETGUARD_ALLOW"
RFC1918 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))


def allow(network: str) -> ipaddress.IPv4Network:
    """Allow connections into `network`, a private subnet the calling test created; refuse anything wider."""
    net = ipaddress.ip_network(network)
    if net.version != 4 or net.prefixlen < 16 or not any(net.subnet_of(block) for block in RFC1918):
        raise ValueError(f"network guard: only a private IPv4 subnet of at most /16 can be allowed, not {network}")
    if net not in allowed:
        allowed.append(net)
    return net


def disallow(network: str) -> None:
    """Refuse `network` again (the test's network is gone)."""
    net = ipaddress.ip_network(network)
    if net in allowed:
        allowed.remove(net)


def is_local_address(address: object) -> bool:
    """True for Unix sockets, loopback hosts and a subnet a test allowed; everything else is outbound."""
    if isinstance(address, (str, bytes)):
        return True  # AF_UNIX path
    host = address[0] if isinstance(address, tuple) else address
    if host in ("localhost", "", None):
        return True
    try:
        ip = ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        return False
    return ip.is_loopback or any(ip in net for net in allowed)


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
