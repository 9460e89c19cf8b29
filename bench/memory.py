"""Peak memory of one PostgreSQL cluster's processes and of this process, sampled from /proc.

Only the processes of the cluster whose data directory is given are counted (its postmaster, read from
`postmaster.pid`, and the postmaster's children): other worktrees' servers on the same machine are not.
Two figures, because a backend's VmRSS includes the shared buffers it touched (counted once per process
that touched them): the peak of the sum of private memory (RssAnon) over the cluster, and the peak of the
largest shared memory mapped (RssShmem, i.e. the shared buffers in use).
"""

from __future__ import annotations

import resource
import threading
import time
from pathlib import Path


def _status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # the process ended between listing and reading
        return {}
    return {k: v.strip() for k, v in (line.split(":", 1) for line in text.splitlines() if ":" in line)}


def _kb(fields: dict[str, str], key: str) -> int:
    return int(fields.get(key, "0 kB").split()[0])


def postmaster_pid(pgdata: Path) -> int | None:
    """The postmaster's pid from `postmaster.pid` of a data directory, or None when it does not run here."""
    try:
        return int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class ClusterMemory(threading.Thread):
    """Samples a cluster's memory every `interval` s until `stop()`: peak private sum, peak shared, peak VmRSS."""

    def __init__(self, pgdata: Path, interval: float = 0.2):
        super().__init__(daemon=True)
        self.root = postmaster_pid(pgdata)
        self.interval = interval
        self._halt = threading.Event()
        self.peak_private_kb = self.peak_shared_kb = self.peak_rss_kb = 0

    def sample(self) -> None:
        """Read every process of the cluster once and raise the peaks."""
        if self.root is None:
            return
        private = shared = rss = 0
        for status in Path("/proc").glob("[0-9]*/status"):
            pid = int(status.parent.name)
            fields = _status(pid)
            if pid != self.root and fields.get("PPid") != str(self.root):
                continue
            private += _kb(fields, "RssAnon")
            shared, rss = max(shared, _kb(fields, "RssShmem")), max(rss, _kb(fields, "VmRSS"))
        self.peak_private_kb = max(self.peak_private_kb, private)
        self.peak_shared_kb, self.peak_rss_kb = max(self.peak_shared_kb, shared), max(self.peak_rss_kb, rss)

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            time.sleep(self.interval)

    def stop(self) -> dict[str, int | None]:
        """Stop sampling; the peaks in MB (None when the cluster is not local)."""
        self._halt.set()
        self.join()
        if self.root is None:
            return {"postgres_peak_private_mb": None, "postgres_peak_shared_mb": None, "postgres_peak_rss_mb": None}
        return {
            "postgres_peak_private_mb": self.peak_private_kb // 1024,
            "postgres_peak_shared_mb": self.peak_shared_kb // 1024,
            "postgres_peak_rss_mb": self.peak_rss_kb // 1024,
        }


def loader_peak_rss_mb() -> int:
    """This process's peak resident memory so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
