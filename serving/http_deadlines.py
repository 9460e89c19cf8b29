"""Read deadlines for `sluice serve`: uvicorn's HTTP/1.1 (h11) protocol with header and body timeouts.

uvicorn has no read timeout. `timeout_keep_alive` runs only between requests and every byte received
cancels it, so a client sending one byte every few seconds holds its connection, and mid-body its
request, for as long as it likes. ASGI middleware cannot help: the app is called only once the headers
are complete, and a body the app never reads (a request refused early with 401 or 413) is read and
discarded by uvicorn outside the app. So the deadlines live here, in the protocol:

- headers: from connecting, or from the first byte of the next request on a kept-alive connection, until
  the headers are complete (SLUICE_HEADER_TIMEOUT_S); then the connection is closed.
- body: from the headers to the body's last byte (SLUICE_BODY_TIMEOUT_S); then 408 if the app had not
  started a response (the app sees a disconnect), and the connection is closed.

A subclass leans on uvicorn internals (`conn`, `cycle`): uvicorn is pinned in constraints.txt, and
tests/reliability/test_http_edge.py exercises both deadlines through a real `sluice serve`.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from sluice import metrics
from sluice.settings import Settings


class DeadlineProtocol(H11Protocol):
    """H11Protocol whose requests must arrive in time: headers, then body, each within its deadline."""

    def __init__(self, *args: Any, header_timeout_s: float, body_timeout_s: float, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.timeouts = {"headers": header_timeout_s, "body": body_timeout_s}
        self.deadline: asyncio.TimerHandle | None = None
        self.phase: str | None = None  # what the running deadline waits for: "headers" or "body"

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("headers")  # a connection that never sends a byte is closed too

    def data_received(self, data: bytes) -> None:
        if self.phase is None and self.conn.their_state is h11.IDLE:
            self._arm("headers")  # the first byte of the next request on a kept-alive connection
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start a pipelined request already buffered
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _follow(self) -> None:
        """Move the deadline along with the client's side of the exchange."""
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            if self.phase != "body":
                self._arm("body")
        elif state is h11.IDLE:  # between requests: the keep-alive timer's turn, unless bytes are waiting
            if self.phase == "body":
                self._disarm()  # the rest of a body refused early has arrived
            if self.phase is None and self.conn.trailing_data[0]:
                self._arm("headers")  # part of a pipelined request is waiting in h11's buffer
        else:  # DONE, MUST_CLOSE, CLOSED, ERROR, SWITCHED_PROTOCOL: nothing more to read for this request
            self._disarm()

    def _arm(self, phase: str) -> None:
        self._disarm()
        self.phase = phase
        self.deadline = self.loop.call_later(self.timeouts[phase], self._expired)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        self.deadline, self.phase = None, None

    def _expired(self) -> None:
        phase, self.deadline, self.phase = self.phase, None, None
        if self.transport.is_closing():
            return
        metrics.REJECTED.labels(f"{phase}_timeout").inc()
        cycle = self.cycle
        if phase == "body" and cycle is not None and not cycle.response_started:
            cycle.disconnected = True  # the app's receive() now returns http.disconnect; its sends are dropped
            self._send_408()
            cycle.message_event.set()
        self.transport.close()

    def _send_408(self) -> None:
        detail = (
            f"request body not received within {self.timeouts['body']:g} s (SLUICE_BODY_TIMEOUT_S): "
            "send it faster, or through a proxy that buffers request bodies"
        )
        body = json.dumps({"detail": detail}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        try:
            for event in (h11.Response(status_code=408, headers=headers), h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
        except h11.LocalProtocolError:  # h11 cannot answer in its current state: closing says enough
            pass


def deadline_protocol(settings: Settings) -> Callable[..., DeadlineProtocol]:
    """uvicorn's `http` option for these settings (a partial of a module-level class: picklable for --workers)."""
    return functools.partial(
        DeadlineProtocol, header_timeout_s=settings.header_timeout_s, body_timeout_s=settings.body_timeout_s
    )
