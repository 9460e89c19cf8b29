"""Peak memory of `sluice serve` for large request bodies: a near-limit upload, and an oversized chunked
body sent without a key.

    PYTHONPATH=$PWD python bench/api_body.py [--chunked-mib 150] [--rounds 2]

Needs Redis on 127.0.0.1:6379 and `sluice db up`. No worker: an upload is answered 202 once it is on
disk and queued. Each case runs against a fresh API process; its peak RSS is read from /proc (VmHWM,
reset after a warm-up request through clear_refs), so the figure is the case's own peak above the
process's resting size. Prints one markdown row per case and round.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from serving.auth import create_key  # noqa: E402
from sluice.db import Database, create_tenant, migrate  # noqa: E402
from sluice.settings import load_settings  # noqa: E402

REDIS = "redis://127.0.0.1:6379/12"
PREFIX = "sluice-bench-body:"
MIB = 1024 * 1024


def kib(pid: int, field: str) -> int:
    """A `VmRSS`/`VmHWM` line of /proc/PID/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def start_api(port: int, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), SLUICE_BROKER_URL=REDIS, SLUICE_BROKER_KEY_PREFIX=PREFIX)
    cmd = [sys.executable, "-m", "cli", "serve", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"sluice serve did not come up: {log.read_text()[-2000:]}")


def warm(port: int, key: str, pid: int) -> int:
    """One authenticated request (pools open), then reset the peak; the resting RSS in KiB."""
    httpx.get(f"http://127.0.0.1:{port}/v1/jobs/none", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    return kib(pid, "VmRSS")


def upload(port: int, key: str, size: int) -> tuple[int, float]:
    """POST one file of `size` bytes as an ingest job; (status, seconds)."""
    content = base64.b64encode(os.urandom(size)).decode()
    body = json.dumps({"kind": "ingest", "files": [{"name": "big.bin", "content_base64": content}]}).encode()
    del content
    t0 = time.perf_counter()
    r = httpx.post(
        f"http://127.0.0.1:{port}/v1/jobs",
        content=body,
        headers={"Authorization": f"Bearer {key}", "content-type": "application/json"},
        timeout=300,
    )
    return r.status_code, time.perf_counter() - t0


def chunked_without_key(port: int, mib: int) -> tuple[int | None, int, float]:
    """Send a chunked JSON body of `mib` MiB without Authorization, reading any early answer.

    (status or None, MiB sent before the answer arrived, seconds).
    """
    sock = socket.create_connection(("127.0.0.1", port))
    head = b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    sock.sendall(head)
    t0, sent, chunk = time.perf_counter(), 0, b"A" * MIB
    pieces = [b'{"kind":"ingest","files":[{"name":"a.txt","content_base64":"'] + [chunk] * mib + [b'"}]}']
    try:
        for piece in pieces:
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sent += len(piece)
            sock.setblocking(False)
            try:
                answer = sock.recv(4096)
            except BlockingIOError:
                answer = b""
            sock.setblocking(True)
            if answer:
                return int(answer.split(b" ", 2)[1]), sent // MIB, time.perf_counter() - t0
        sock.sendall(b"0\r\n\r\n")
        sock.settimeout(300)
        answer = sock.recv(4096)
        return int(answer.split(b" ", 2)[1]), sent // MIB, time.perf_counter() - t0
    except OSError:
        return None, sent // MIB, time.perf_counter() - t0
    finally:
        sock.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunked-mib", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--port", type=int, default=8795)
    args = ap.parse_args()
    settings = load_settings()
    migrate(settings)
    tenant = f"bench-body-{uuid.uuid4().hex[:6]}"
    with Database(settings) as db:
        create_tenant(db, tenant)
        key = create_key(db, tenant).secret
    near = settings.max_upload_bytes - 64 * 1024
    print(
        "| case | status | sent MiB | seconds | resting RSS MiB | peak above resting MiB |\n|---|---|---|---|---|---|"
    )
    try:
        for _ in range(args.rounds):
            for case in ("upload", "chunked"):
                print(measure(case, args, key, near))
    finally:
        shutil.rmtree(settings.data_dir / "uploads" / tenant, ignore_errors=True)
        client = redis.Redis.from_url(REDIS)
        keys = list(client.scan_iter(match=f"{PREFIX}*"))
        if keys:
            client.delete(*keys)


def measure(case: str, args: argparse.Namespace, key: str, near: int) -> str:
    """One case on a freshly started API: its table row."""
    api = start_api(args.port, Path("/tmp/sluice-bench-body.log"))
    try:
        rest = warm(args.port, key, api.pid)
        if case == "upload":
            status, seconds = upload(args.port, key, near)
            sent, name = near / MIB, f"upload {near / MIB:.2f} MiB, with key"
        else:
            status, sent, seconds = chunked_without_key(args.port, args.chunked_mib)
            name = f"chunked {args.chunked_mib} MiB, no key"
        time.sleep(0.5)
        peak = kib(api.pid, "VmHWM") - rest
        return f"| {name} | {status} | {sent:.0f} | {seconds:.2f} | {rest / 1024:.0f} | {peak / 1024:.0f} |"
    finally:
        api.terminate()
        api.wait(timeout=30)


if __name__ == "__main__":
    main()
