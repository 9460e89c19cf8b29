"""Hosts on one Linux machine: a network namespace, a hostname, a filesystem view and a folder each.

    with Network(["db", "broker", "api", "w1", "w2"], users={"db": NOBODY}) as net:
        proc = net["w1"].spawn([sys.executable, "-m", "cli", "worker"], env, "worker.log")
        net["w1"].kill()          # kill -9 of every process in w1's namespace: the host is gone

Each host is a network namespace with one veth on a bridge in the root namespace, on a /24 of
10.231.0.0/16 that no interface of this machine uses; the root namespace holds the bridge's `.1`,
so the process that built the network reaches every host. Every process of a host runs in a UTS
namespace (its own hostname, as Celery node names need), an IPC namespace and a mount namespace, where
/tmp and /dev/shm are fresh and every other host's folder (plus any path in `hide`) is covered by
an empty read-only tmpfs: a file one host writes does not exist for another, so a hidden
shared-disk dependency fails loudly (FileNotFoundError), as it would across real machines.
Processes run as root (the shared venv's interpreter may live under /root), except hosts given a
uid in `users` (PostgreSQL refuses root).

Needs root and `ip`, `unshare`, `setpriv` (iproute2, util-linux). Names carry a per-run id; a run
records its pid in STATE_DIR before it creates anything, and every start removes what runs whose
process is gone left behind (namespaces and their processes, veths, bridge, folders), so a crashed
run cannot collide with the next. Used by tests/reliability/test_multi_host.py and bench/ (stdlib
only, and no import of tests/: bench must not import tests).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PREFIX = "smh"  # namespaces smh<id>-<host>, bridge smh<id>, veths smh<id>v<n>: under 15 characters
STATE_DIR = Path("/run/sluice-netns")
SUPERNET = ipaddress.ip_network("10.231.0.0/16")
HOSTS_PARENT = Path("/var/tmp")  # not /tmp: every host mounts a /tmp of its own over it
NOBODY = 65534  # for a service that refuses root (PostgreSQL) and wants a passwd entry (initdb)


class NetnsUnavailable(RuntimeError):
    """This process cannot build namespaces (not root, or the tools are missing)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def check_privileges() -> None:
    """Raise NetnsUnavailable naming what is missing: root and the iproute2/util-linux tools."""
    missing = [tool for tool in ("ip", "unshare", "setpriv") if shutil.which(tool) is None]
    if missing:
        raise NetnsUnavailable(f"network namespaces need {', '.join(missing)} (apt-get install iproute2 util-linux)")
    if os.geteuid() != 0:
        raise NetnsUnavailable(
            f"network namespaces need root (CAP_NET_ADMIN, CAP_SYS_ADMIN); this is uid {os.geteuid()}"
        )


@dataclass
class Host:
    """One host: its namespace, address on the bridge, uid/gid and private folder (data/, home/, tmp/)."""

    name: str
    netns: str
    address: str
    uid: int
    gid: int
    root: Path
    hidden: tuple[Path, ...] = ()  # the other hosts' folders, and anything else no host may see

    @property
    def data(self) -> Path:
        return self.root / "data"

    def base_env(self) -> dict[str, str]:
        """A clean environment: nothing of the caller's, HOME and TMPDIR on this host."""
        home, tmp = str(self.root / "home"), str(self.root / "tmp")
        path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
        user = f"{PREFIX}-{self.name}"
        return {"PATH": path, "HOME": home, "TMPDIR": tmp, "USER": user, "LOGNAME": user, "LANG": "C.UTF-8"}

    def command(self, argv: list[str]) -> list[str]:
        """`argv` as run on this host: its namespace, hostname, /tmp and /dev/shm, other hosts' folders hidden."""
        hide = " ".join(f"mount -t tmpfs -o ro,mode=0555,size=4k hidden {shlex.quote(str(p))} &&" for p in self.hidden)
        private = "mount -t tmpfs -o mode=1777 tmp /tmp && mount -t tmpfs shm /dev/shm"
        script = f'hostname "$0" && {private} && {hide} exec "$@"'
        drop = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "--"] if self.uid else []
        # --ipc: a SysV segment (PostgreSQL's) goes with its processes, not left on the machine after a kill.
        ns = ["ip", "netns", "exec", self.netns, "unshare", "--uts", "--ipc", "--mount", "--propagation", "private"]
        ns.append("--")
        return [*ns, "sh", "-c", script, self.name, *drop, *argv]

    def spawn(self, argv: list[str], env: dict[str, str], log: str, cwd: Path | None = None) -> subprocess.Popen:
        """Start `argv` on this host, output to `log` in its folder (the caller reads it, not another host)."""
        out = (self.root / log).open("ab")
        try:
            return subprocess.Popen(
                self.command(argv), env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
            )
        finally:
            out.close()

    def run(self, argv: list[str], env: dict[str, str], timeout: float = 300, cwd: Path | None = None):
        """Run `argv` on this host to its end: a CompletedProcess with its text output."""
        return subprocess.run(self.command(argv), env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)

    def pids(self) -> list[int]:
        """Every process in this host's network namespace."""
        done = _ip("netns", "pids", self.netns, check=False)
        return [int(pid) for pid in done.stdout.split()]

    def send_signal(self, signum: int) -> list[int]:
        """Send `signum` to every process of this host (SIGSTOP freezes it, SIGCONT resumes); the pids."""
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        return pids

    def kill(self, timeout: float = 10) -> list[int]:
        """kill -9 every process of this host, as a power cut would; the pids killed."""
        killed: list[int] = []
        deadline = time.monotonic() + timeout
        while (pids := self.send_signal(signal.SIGKILL)) and time.monotonic() < deadline:  # a fork may race a round
            killed += [pid for pid in pids if pid not in killed]
            time.sleep(0.05)
        return killed

    def log(self, name: str, tail: int = 3000) -> str:
        path = self.root / name
        return path.read_text(errors="replace")[-tail:] if path.exists() else f"(no {name})"


class Network:
    """Build the hosts named `names` on a fresh bridge and subnet; remove everything on exit, also on failure."""

    def __init__(self, names: list[str], users: dict[str, int] | None = None, hide: tuple[Path, ...] = ()):
        """`users`: host name -> uid its processes run as (default root); `hide`: more paths no host sees."""
        self.names, self.users, self.hide = list(names), dict(users or {}), tuple(hide)
        self.run_id = secrets.token_hex(3)
        self.hosts: dict[str, Host] = {}
        self.subnet: ipaddress.IPv4Network | None = None
        self.root: Path | None = None

    @property
    def bridge(self) -> str:
        return f"{PREFIX}{self.run_id}"

    @property
    def gateway(self) -> str:
        """The root namespace's address on the bridge (this process's, to reach the hosts)."""
        return str(self.subnet.network_address + 1)

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __enter__(self) -> Network:
        check_privileges()
        remove_stale()
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        (STATE_DIR / self.run_id).write_text(str(os.getpid()))  # before anything exists: never taken as stale
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        self.subnet = free_subnet()
        self.root = HOSTS_PARENT / f"sluice-hosts-{self.run_id}"
        self.root.mkdir(mode=0o711)
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for n, name in enumerate(self.names):
            self.hosts[name] = self._host(n, name, self.users.get(name, 0))
        for host in self.hosts.values():
            others = tuple(other.root for other in self.hosts.values() if other is not host)
            host.hidden = others + tuple(path for path in self.hide if path.is_dir())

    def _host(self, n: int, name: str, uid: int) -> Host:
        netns, veth = f"{PREFIX}{self.run_id}-{name}", f"{PREFIX}{self.run_id}v{n}"
        address = str(self.subnet.network_address + 10 + n)
        _ip("netns", "add", netns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", f"{veth}p")
        _ip("link", "set", f"{veth}p", "netns", netns)
        _ip("link", "set", veth, "master", self.bridge, "up")
        _ip("-n", netns, "link", "set", f"{veth}p", "name", "eth0")
        _ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        root = self.root / name
        for folder in (root, root / "data", root / "home", root / "tmp"):
            folder.mkdir(mode=0o700)
            os.chown(folder, uid, uid)
        return Host(name, netns, address, uid, uid, root)

    def close(self) -> None:
        """Kill every host's processes, delete namespaces, veths, bridge and folders (each step even if one fails)."""
        for host in self.hosts.values():
            host.kill()
        _remove_run(self.run_id)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 of SUPERNET that no interface of this machine has an address in."""
    used = _ip("-o", "-4", "addr", "show").stdout
    taken = set()
    for line in used.splitlines():
        parts = line.split()
        address = ipaddress.ip_interface(parts[parts.index("inet") + 1])
        taken.add(ipaddress.ip_network(f"{address.ip}/24", strict=False))
    start = secrets.randbelow(256)  # two runs starting together rarely pick the same one first
    for k in range(256):
        candidate = list(SUPERNET.subnets(new_prefix=24))[(start + k) % 256]
        if candidate not in taken and candidate.network_address.packed[2] not in (0, 255):
            return candidate
    raise RuntimeError(f"no free /24 left in {SUPERNET}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> list[str]:
    """Remove what earlier runs whose process is gone left behind; the run ids removed."""
    runs = set()
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(PREFIX) and "-" in name:
            runs.add(name[len(PREFIX) : name.index("-")])
    for line in _ip("-o", "link", "show", "type", "bridge", check=False).stdout.splitlines():
        name = line.split(":")[1].strip()
        if name.startswith(PREFIX):
            runs.add(name[len(PREFIX) :])
    if STATE_DIR.is_dir():
        runs |= {path.name for path in STATE_DIR.iterdir()}
    runs |= {path.name.removeprefix("sluice-hosts-") for path in HOSTS_PARENT.glob("sluice-hosts-*")}
    stale = [run for run in sorted(runs) if not _owner_alive(run)]
    for run in stale:
        _remove_run(run)
        shutil.rmtree(HOSTS_PARENT / f"sluice-hosts-{run}", ignore_errors=True)
    return stale


def _owner_alive(run_id: str) -> bool:
    marker = STATE_DIR / run_id
    try:
        return _alive(int(marker.read_text()))
    except (OSError, ValueError):
        return False


def _remove_run(run_id: str) -> None:
    """Delete one run's namespaces (killing what runs in them), its veths and bridge, and its marker."""
    prefix = f"{PREFIX}{run_id}-"
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(prefix):
            for pid in _ip("netns", "pids", name, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _ip("netns", "delete", name, check=False)  # takes its veth ends, and so the pairs, with it
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name == f"{PREFIX}{run_id}" or name.startswith(f"{PREFIX}{run_id}v"):
            _ip("link", "delete", name, check=False)
    (STATE_DIR / run_id).unlink(missing_ok=True)
