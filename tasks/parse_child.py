"""The parse process: `python -m tasks.parse_child FD LIMITS_JSON`, started by `tasks.parse_process`.

It caps its own data segment (RLIMIT_DATA, before importing anything) at 1.5x SLUICE_PARSE_MEMORY_BYTES:
the parent kills it once its resident memory passes the setting (so the reason is always that limit,
even when a library swallows the MemoryError, as unstructured does around PDF text extraction), and
the cap stops an allocation that outruns the parent's checks. It imports unstructured once, says it is
ready, then parses one document per request from the connection on FD and answers with plain data (JSON:
never pickle, whose loading would run code a hostile document might have planted here). After a
MemoryError it answers and exits, so the next document starts in fresh memory. It exits quietly (code 0)
when its parent closes the connection or it has been idle IDLE_EXIT_S seconds, and at once if the
parent process dies.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import resource
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

from sluice.config import ParserConfig
from sluice.errors import DocumentError
from tasks.parse_limits import ParseLimits, over_memory

# An idle parser gives its memory (~0.3-0.8 GB of imports) back; the next ingest pays ~5 s to start one.
IDLE_EXIT_S = 300.0
TRIM_GROWTH = 64 * 1024 * 1024
# unstructured's partitioner modules for the formats tasks.parse.SUPPORTED names.
PARTITIONERS = ("md", "text", "html", "docx", "pptx", "xlsx", "csv", "epub", "email", "json", "rst", "pdf")


def main(fd: int, limits: ParseLimits) -> None:
    """Serve parse requests on `fd` until the parent goes or the process idles out."""
    backstop = limits.memory_bytes * 3 // 2
    resource.setrlimit(resource.RLIMIT_DATA, (backstop, backstop))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash on a hostile file leaves no core file
    _exit_with_parent(os.getppid())
    conn = Connection(fd)
    _warm_up()
    conn.send_bytes(json.dumps({"ready": os.getpid()}).encode())
    floor = _rss()
    while conn.poll(IDLE_EXIT_S):
        try:
            header, data = json.loads(conn.recv_bytes()), conn.recv_bytes()
        except EOFError:
            return
        reply, spent = answer(header, data, limits)
        conn.send_bytes(reply)
        if spent:
            return
        floor = _release_memory(floor)


def answer(header: dict, data: bytes, limits: ParseLimits) -> tuple[bytes, bool]:
    """The JSON reply to one request ({"doc": ...} or {"error": {"stage", "reason"}}), and whether this
    process ran out of memory (then the parent gets an answer and a fresh process takes the next document)."""
    from tasks.parse import parse_file

    _reset_peak()
    try:
        config = ParserConfig.model_validate(header["parser"])
        doc = parse_file(Path(header["path"]), header["source_id"], config, data, limits)
        reply = json.dumps({"doc": dataclasses.asdict(doc)}).encode()
        if len(reply) > limits.max_unzipped_bytes:  # the parent never holds more of a document than this
            raise DocumentError(header["source_id"], "parse", _too_large(len(reply), limits))
    except DocumentError as err:
        if isinstance(err.__cause__, MemoryError):
            return _out_of_memory(limits), True
        reply = json.dumps({"error": {"stage": err.stage, "reason": err.reason}}).encode()
    except MemoryError:
        return _out_of_memory(limits), True
    if _peak() > limits.memory_bytes:  # past the limit between two of the parent's checks (a swallowed MemoryError?)
        return _out_of_memory(limits), True
    return reply, False


def _too_large(size: int, limits: ParseLimits) -> str:
    return (
        f"the parsed document is {size} bytes, above the limit of {limits.max_unzipped_bytes} "
        "(SLUICE_MAX_UNZIPPED_BYTES): split the file, or raise the limit if it is genuine"
    )


def _out_of_memory(limits: ParseLimits) -> bytes:
    return json.dumps({"error": {"stage": "parse", "reason": over_memory(limits)}, "exit": True}).encode()


def _warm_up() -> None:
    """Import every partitioner and build the offline NLP stand-in before any document's clock starts.

    unstructured imports them on first use: 5-15 s for the first text file (it pulls in torch), ~2-6 s more
    for the first PDF. Counted against SLUICE_PARSE_TIMEOUT_S, that would fail whichever document came first.
    """
    import importlib

    from tasks.parse import _offline_nlp, install_offline_nlp

    for name in PARTITIONERS:
        importlib.import_module(f"unstructured.partition.{name}")

    install_offline_nlp()
    _offline_nlp()
    gc.collect()
    gc.freeze()  # the imports' objects leave the collector's view: full collections then scan only a document's


def _release_memory(floor: int) -> int:
    """Give a large document's freed heap back to the kernel; return the new resident floor.

    Only when resident memory grew TRIM_GROWTH past the last floor: `malloc_trim` costs up to ~8 ms, more
    than parsing a small document.
    """
    from tasks.embed import release_freed_memory

    if _rss() <= floor + TRIM_GROWTH:
        return floor
    release_freed_memory()
    return _rss()


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM, the peak resident size


def _peak() -> int:
    with open("/proc/self/status") as fh:
        line = next(line for line in fh if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _exit_with_parent(parent: int) -> None:
    """Exit as soon as the parent process is gone (kill -9 of a worker leaves no parser behind)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


if __name__ == "__main__":
    main(int(sys.argv[1]), ParseLimits(**json.loads(sys.argv[2])))
