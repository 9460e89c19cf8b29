"""Parse documents in long-lived child processes whose memory and time are bounded: a bomb costs one document.

Each child (`tasks.parse_child`) is a fresh interpreter, not a fork: a fork of a worker would inherit its
threads, its model and its address space. It is started once, imports unstructured once, and then parses
document after document; results come back as plain data. A child that runs past SLUICE_PARSE_TIMEOUT_S
is killed; one that dies (a crash, the kernel's OOM killer) or runs out of its SLUICE_PARSE_MEMORY_BYTES
is replaced. Either way that document is recorded as failed, with a reason naming the limit, and the
next one goes to a fresh child. The calling process never holds a document's decompressed bytes, so its
memory does not grow with a bomb.

A pool per process and limits hands each concurrent caller (the flow's prepare threads) a child of its own.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from functools import lru_cache
from multiprocessing.connection import Connection
from pathlib import Path

from sluice.config import ParserConfig
from sluice.errors import DocumentError, SluiceError
from tasks.parse import Element, ParsedDocument
from tasks.parse_limits import ParseLimits, over_memory

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S = 600.0  # importing unstructured takes ~5 s idle, minutes on a machine loaded 20x
WATCH_S = 0.05  # how often a parent waiting for a reply checks the child's memory and deadline
PAGE = os.sysconf("SC_PAGE_SIZE")


class ParserUnavailableError(SluiceError):
    """The parse process cannot start: no document can be parsed, so the run stops."""


class _Died(Exception):
    """The child closed its end: it crashed, was killed, or had just exited idle."""


class _Overran(Exception):
    """The child passed its memory or time limit while parsing; the message names the limit."""


class ParseProcess:
    """One running `tasks.parse_child` and the connection to it."""

    def __init__(self, limits: ParseLimits):
        self.limits = limits
        ours, theirs = socket.socketpair()
        args = [sys.executable, "-m", "tasks.parse_child", str(theirs.fileno()), json.dumps(dataclasses.asdict(limits))]
        with theirs:
            self.proc = subprocess.Popen(args, pass_fds=(theirs.fileno(),), env=_child_env(), stdin=subprocess.DEVNULL)
        self.conn = Connection(ours.detach())
        self.ready = False  # the first `ask` waits for the child's imports

    def await_ready(self) -> None:
        try:
            if not self.conn.poll(STARTUP_TIMEOUT_S):
                raise ParserUnavailableError(f"the parse process did not start within {STARTUP_TIMEOUT_S:g} s")
            self.conn.recv_bytes()
        except (EOFError, OSError):
            raise ParserUnavailableError(
                f"the parse process exited ({_how(self.stop())}) before it was ready: see its error output above "
                f"(its imports alone need ~0.6 GB: is SLUICE_PARSE_MEMORY_BYTES={self.limits.memory_bytes} too low?)"
            ) from None
        except BaseException:
            self.stop()
            raise
        self.ready = True

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def ask(self, path: Path, source_id: str, config: ParserConfig, data: bytes) -> dict:
        """The child's reply for one document; _Overran when it passed a limit first, _Died when it died."""
        header = {"path": str(path), "source_id": source_id, "parser": config.model_dump(mode="json")}
        if not self.ready:
            self.await_ready()
        try:
            self.conn.send_bytes(json.dumps(header).encode())
            self.conn.send_bytes(data)
            self._watch()
            return json.loads(self.conn.recv_bytes())
        except (EOFError, OSError) as exc:  # BrokenPipe, ConnectionReset: the child is gone
            raise _Died from exc

    def _watch(self) -> None:
        """Wait for the reply, checking the child's resident memory and the deadline every WATCH_S."""
        deadline = time.monotonic() + self.limits.timeout_s
        while not self.conn.poll(WATCH_S):
            if self.resident() > self.limits.memory_bytes:
                raise _Overran(over_memory(self.limits))
            if time.monotonic() > deadline:
                raise _Overran(_overran(self.limits))

    def resident(self) -> int:
        """The child's resident memory in bytes (0 once it is gone)."""
        try:
            with open(f"/proc/{self.proc.pid}/statm") as fh:
                return int(fh.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            return 0

    def stop(self) -> int:
        """Kill the child (it holds nothing worth a goodbye) and return its exit status."""
        self.conn.close()
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait()


class ParsePool:
    """Idle parse processes for one set of limits, started on demand, one per concurrent caller."""

    def __init__(self, limits: ParseLimits):
        self.limits = limits
        self._idle: list[ParseProcess] = []
        self._lock = threading.Lock()

    def parse(self, path: Path, source_id: str, config: ParserConfig, data: bytes) -> ParsedDocument:
        """Parse one file in a child; DocumentError naming the limit when it overran one, or the parser died."""
        for attempt in (1, 2):
            child = self._take()
            try:
                reply = child.ask(path, source_id, config, data)
            except _Overran as over:
                child.stop()
                raise DocumentError(source_id, "parse", str(over)) from None
            except _Died:
                status = child.stop()
                if status == 0 and attempt == 1:
                    continue  # it had exited idle just as the document was sent: a fresh child takes it
                raise DocumentError(source_id, "parse", _died(status, self.limits)) from None
            except BaseException:  # e.g. Celery's soft time limit: the child is mid-document, in an unknown state
                child.stop()
                raise
            return self._settle(child, reply, source_id)
        raise AssertionError("unreachable")

    def _settle(self, child: ParseProcess, reply: dict, source_id: str) -> ParsedDocument:
        if reply.get("exit"):
            child.stop()
        else:
            with self._lock:
                self._idle.append(child)
        if "error" in reply:
            raise DocumentError(source_id, reply["error"]["stage"], reply["error"]["reason"])
        return _document(reply["doc"])

    def _take(self) -> ParseProcess:
        with self._lock:
            while self._idle:
                child = self._idle.pop()
                if child.alive:
                    return child
                child.stop()
        return ParseProcess(self.limits)

    def prestart(self) -> None:
        """Start a child now, without waiting for it, unless one is idle: its imports (~6 s) overlap the caller's."""
        with self._lock:
            self._an_idle_child()

    def warm(self) -> None:
        """Start a child unless one is idle, and wait until its imports are done (a worker's warm-up)."""
        with self._lock:  # held while it imports: a parse meanwhile waits for this child, not a second one
            child = self._an_idle_child()
            if not child.ready:
                child.await_ready()

    def _an_idle_child(self) -> ParseProcess:
        """The last idle child, started now if there is none (the caller holds the lock)."""
        if not self._idle:
            self._idle.append(ParseProcess(self.limits))
        return self._idle[-1]

    def close(self) -> None:
        """Stop every idle child (busy ones are stopped by their caller)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for child in idle:
            child.stop()

    def pids(self) -> list[int]:
        """Process ids of the idle children (for tests and diagnostics)."""
        with self._lock:
            return [c.proc.pid for c in self._idle if c.alive]


@lru_cache(maxsize=8)
def _pool(limits: ParseLimits, pid: int) -> ParsePool:
    pool = ParsePool(limits)
    atexit.register(pool.close)
    return pool


def parse_pool(limits: ParseLimits | None = None) -> ParsePool:
    """This process's pool for `limits` (the Settings defaults when None); a forked process gets its own."""
    return _pool(limits or ParseLimits.default(), os.getpid())


def parse_bounded(
    path: Path, source_id: str, config: ParserConfig, data: bytes, limits: ParseLimits | None = None
) -> ParsedDocument:
    """Parse one file in a bounded child process (see the module docstring)."""
    return parse_pool(limits).parse(path, source_id, config, data)


def _document(body: dict) -> ParsedDocument:
    elements = tuple(Element(**e) for e in body["elements"])
    return ParsedDocument(body["source_id"], body["text"], elements, body["content_hash"], body["metadata"])


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("OMP_NUM_THREADS", "1")  # parsing is single-threaded; torch (imported for PDFs) would spawn more
    return env


def _how(status: int) -> str:
    return f"killed by {signal.Signals(-status).name}" if status < 0 else f"exit code {status}"


def _overran(limits: ParseLimits) -> str:
    return (
        f"parsing took longer than the limit of {limits.timeout_s:g} s (SLUICE_PARSE_TIMEOUT_S) and was stopped: "
        "split the file, or raise the limit if it is genuine"
    )


def _died(status: int, limits: ParseLimits) -> str:
    return (
        f"the parser process died ({_how(status)}) while parsing this file and was restarted for the next one: "
        f"a file that crashes the parser, or the machine ran out of memory (the parser itself is held to "
        f"{limits.memory_bytes} bytes, SLUICE_PARSE_MEMORY_BYTES)"
    )
