"""The HTTP edge of a real `sluice serve`: a body is judged before it is read, capped while it streams,
and slow clients are cut off by the header and body deadlines. No worker: nothing here needs an answer.

Deadlines are short here (2 s and 3 s); SLACK allows for a loaded machine. Before these changes the
server waited for slow clients without limit, buffered a chunked body whole before answering 401,
and checked only Content-Length against the body limit.
"""

from __future__ import annotations

import base64
import socket
import time
import uuid

import httpx
import kombu.exceptions
import psycopg
import pytest

from serving.api.jobs import submit_job
from serving.api.state import ApiState
from serving.auth import create_key
from serving.schemas import IngestJob, UploadedFile
from sluice.db import admin_conninfo, create_tenant
from tests.reliability.raw_http import (
    MIB,
    closed_after,
    connect,
    head,
    kib,
    reset_peak,
    send_until_answered,
    status,
    upload_pieces,
)
from tests.reliability.stack import drop_keys, private_settings
from tests.serving_support import api_subprocess

MAX_UPLOAD = MIB  # the body limit is then 1 MiB * 4/3 + 1 MiB
HEADER_S, BODY_S = 2.0, 3.0
SLACK = 3.0


@pytest.fixture(scope="module")
def edge(migrated, db, tmp_path_factory):
    """(API URL, API pid, API key, tenant, settings) of a private `sluice serve` with short deadlines."""
    tmp = tmp_path_factory.mktemp("edge")
    update = {"max_upload_bytes": MAX_UPLOAD, "header_timeout_s": HEADER_S, "body_timeout_s": BODY_S}
    settings = private_settings(migrated, "edge", tmp, **update)
    tenant = f"edge-{uuid.uuid4().hex[:8]}"
    create_tenant(db, tenant)
    try:
        with api_subprocess(settings, tmp / "api.log") as (url, proc):
            yield url, proc.pid, create_key(db, tenant).secret, tenant, settings
    finally:
        drop_keys(settings)


def test_chunked_oversized_body_without_a_key_is_refused_unread(edge):
    url, pid, *_ = edge
    rest = reset_peak(pid)
    with connect(url) as sock:
        sock.sendall(head("POST", "/v1/jobs"))
        answer, sent = send_until_answered(sock, upload_pieces(64 * MIB))
        for piece in upload_pieces(64 * MIB):  # the rest is read and dropped, never buffered
            try:
                sock.sendall(piece)
            except OSError:
                break
    assert status(answer) == 401, answer[:300]
    assert sent <= 8 * MIB, f"answered only after {sent / MIB:.0f} MiB of the body"
    grew = (kib(pid, "VmHWM") - rest) / 1024
    assert grew < 24, f"the API's peak RSS grew by {grew:.0f} MiB for a body it refused"


def test_chunked_oversized_body_with_a_key_gets_413_as_it_passes_the_limit(edge):
    url, _, key, *_ = edge
    with connect(url) as sock:
        sock.sendall(head("POST", "/v1/jobs", key))
        answer, sent = send_until_answered(sock, upload_pieces(64 * MIB, piece=256 * 1024))
    assert status(answer) == 413, answer[:300]
    assert b"SLUICE_MAX_UPLOAD_BYTES" in answer, answer[:300]
    assert sent <= 24 * MIB, f"answered only after {sent / MIB:.0f} MiB of a 64 MiB body"


def test_slow_headers_and_idle_connections_are_closed(edge):
    url = edge[0]
    with connect(url) as idle, connect(url) as slow:
        slow.sendall(b"POST /v1/query HTTP/1.1\r\nHost: sluice\r\nX-Pad: ")
        seconds, _ = closed_after(slow, HEADER_S + 10, trickle=b"a" * 100)  # one byte every 0.5 s
        assert seconds <= HEADER_S + SLACK, f"slow headers held the connection for {seconds:.1f} s"
        seconds, _ = closed_after(idle, 1)  # opened with `slow`: its deadline has passed too
        assert seconds <= 1, "a connection that sent nothing is still open"


def test_slow_body_gets_408_naming_the_setting(edge):
    url, _, key, *_ = edge
    with connect(url) as sock:
        sock.sendall(head("POST", "/v1/jobs", key, length=1000))
        seconds, got = closed_after(sock, BODY_S + 10, trickle=b'{"kind": "ingest"' + b" " * 200)
    assert seconds <= BODY_S + SLACK, f"a slow body held the connection for {seconds:.1f} s"
    assert status(got) == 408 and b"SLUICE_BODY_TIMEOUT_S" in got, got[:300]


def test_many_half_sent_bodies_are_all_dropped(edge):
    url, _, key, *_ = edge
    socks: list[socket.socket] = []
    try:
        for n in range(200):  # a quarter admitted (the app waits for the body), the rest refused unread
            socks.append(connect(url))
            socks[-1].sendall(head("POST", "/v1/jobs", key if n % 4 == 0 else None, length=10_000) + b"{" * 5000)
        deadline = time.monotonic() + BODY_S + SLACK + 2  # sending 200 took a moment too
        still_open = [s for s in socks if closed_after(s, max(0.1, deadline - time.monotonic()))[0] == float("inf")]
        assert not still_open, f"{len(still_open)} of 200 half-sent requests still hold a connection"
    finally:
        for s in socks:
            s.close()
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200


def test_kept_alive_connection_may_idle_past_the_header_deadline(edge):
    with connect(edge[0]) as sock:
        for _ in range(2):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: sluice\r\n\r\n")
            answer = _response(sock)
            assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
            time.sleep(HEADER_S + 1)  # idle between requests: SLUICE_KEEP_ALIVE_S governs, not the header deadline


def _response(sock: socket.socket) -> bytes:
    """One whole response (headers and a Content-Length body), however TCP split it."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(
        int(v) for k, v in (h.split(b":", 1) for h in head.split(b"\r\n")[1:]) if k.lower() == b"content-length"
    )
    while len(body) < length:
        body += sock.recv(65536)
    return data


def test_long_file_name_is_422_and_leaves_no_file(edge):
    url, _, key, tenant, settings = edge
    good = {"name": "ok.md", "content_base64": base64.b64encode(b"# fine\n").decode()}
    long = {"name": "é" * 130 + ".md", "content_base64": base64.b64encode(b"# long\n").decode()}  # 263 bytes
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        r = client.post("/v1/jobs", json={"kind": "ingest", "files": [good, long]})
    assert r.status_code == 422 and "255 bytes" in r.json()["detail"], r.text
    assert _stored_uploads(settings, tenant) == 0


def test_uploads_of_a_request_that_fails_after_storing_them_are_removed(edge, monkeypatch):
    """The broker refuses the message after the files were stored: they are removed with the failure, not
    left with no job to ingest them."""
    settings, tenant = edge[4], edge[3]
    job = IngestJob(kind="ingest", files=[UploadedFile(name="a.md", content_base64=base64.b64encode(b"# a").decode())])
    state = ApiState(settings)
    stored: list[int] = []

    def refuse(*args, **kwargs):
        stored.append(_stored_uploads(settings, tenant))  # what the upload store held when the broker refused
        raise kombu.exceptions.OperationalError("connection refused")

    monkeypatch.setattr(state.celery, "send_task", refuse)
    try:
        with pytest.raises(kombu.exceptions.OperationalError):
            submit_job(state, tenant, job)
    finally:
        state.close()
    assert stored == [1] and _stored_uploads(settings, tenant) == 0  # stored, then removed


def _stored_uploads(settings, tenant: str) -> int:
    with psycopg.connect(admin_conninfo(settings)) as conn:
        return conn.execute("SELECT count(*) FROM uploads WHERE tenant_id = %s", (tenant,)).fetchone()[0]
