"""HTTP/1.1 written by hand over sockets, for what httpx cannot do: trickle bytes, stop half-way, and
read an answer that arrives while the request is still being sent."""

from __future__ import annotations

import asyncio
import json
import re
import select
import socket
import time
from collections.abc import Iterable
from pathlib import Path

import httpx

MIB = 1024 * 1024


def connect(url: str) -> socket.socket:
    u = httpx.URL(url)
    return socket.create_connection((u.host, u.port), timeout=30)


def head(method: str, path: str, key: str | None = None, length: int | None = None) -> bytes:
    """Request line and headers; a chunked body unless `length` is given."""
    lines = [f"{method} {path} HTTP/1.1", "Host: sluice", "Content-Type: application/json"]
    lines += [f"Authorization: Bearer {key}"] if key else []
    lines += [f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def upload_pieces(size: int, piece: int = MIB) -> Iterable[bytes]:
    """A chunked JSON upload of one file whose base64 text is `size` bytes long, in pieces of `piece`."""
    yield chunk(b'{"kind": "ingest", "files": [{"name": "big.txt", "content_base64": "')
    for _ in range(size // piece):
        yield chunk(b"QUFB" * (piece // 4))
    yield chunk(b'"}]}') + b"0\r\n\r\n"


async def post_raw(host: str, port: int, key: str, body: dict) -> tuple[int, dict[str, str]]:
    """One POST /v1/query over its own connection, HTTP/1.1 written by hand: (status, headers).

    Not httpx: its pool spends ~2.5 s of this process's CPU on a 200-request burst (measured), which
    the latencies would then charge to the server.
    """
    data = json.dumps(body).encode()
    request = (
        f"POST /v1/query HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request.encode() + data)
        response = await reader.read()  # Connection: close, so the server ends the stream
    finally:
        writer.close()
    lines = response.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ", 2)[1]), headers


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _ready(sock: socket.socket, wait: float) -> bytes | None:
    """What the server sent within `wait` seconds: bytes, b"" when it closed, None when it sent nothing."""
    if not select.select([sock], [], [], wait)[0]:
        return None
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""


def send_until_answered(sock: socket.socket, pieces: Iterable[bytes], wait: float = 60) -> tuple[bytes, int]:
    """Send pieces while no answer has arrived; (the answer, bytes sent before it began to arrive)."""
    sent = 0
    for piece in pieces:
        if answer := _ready(sock, 0):
            return _complete(sock, answer), sent
        try:
            sock.sendall(piece)
        except OSError:  # the server closed: read what it said
            break
        sent += len(piece)
    return _complete(sock, _ready(sock, wait) or b""), sent


def _complete(sock: socket.socket, answer: bytes) -> bytes:
    """`answer` read on until its headers and Content-Length bytes of body are in, or nothing more comes."""
    while True:
        head, sep, body = answer.partition(b"\r\n\r\n")
        length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        if sep and length and len(body) >= int(length.group(1)):
            return answer
        more = _ready(sock, 5)
        if not more:
            return answer
        answer += more


def closed_after(sock: socket.socket, give_up: float, trickle: bytes = b"", every: float = 0.5) -> tuple[float, bytes]:
    """Send one byte of `trickle` every `every` s until the server closes the connection.

    (seconds until it closed, or inf after `give_up`; what it sent meanwhile).
    """
    t0, got, left = time.monotonic(), b"", trickle
    while time.monotonic() - t0 < give_up:
        data = _ready(sock, every)
        if data == b"":
            return time.monotonic() - t0, got
        got += data or b""
        if data is None and left:
            try:
                sock.sendall(left[:1])
            except OSError:
                return time.monotonic() - t0, got
            left = left[1:]
    return float("inf"), got


def kib(pid: int, field: str) -> int:
    """A `VmRSS` or `VmHWM` line of /proc/PID/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid: int) -> int:
    """Reset the process's peak RSS (VmHWM) to its current RSS; return that, in KiB."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return kib(pid, "VmRSS")
