"""A real HTTP server speaking the OpenAI chat-completions protocol (SSE streaming and not).

Behaviour (latency, errors, token counts, usage reporting) is set per server and can change while
it runs. Used by tests and bench/routing.py; it listens on 127.0.0.1 on a free port in a thread.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Behaviour:
    latency_s: float = 0.0  # before the first byte
    token_delay_s: float = 0.0  # between streamed tokens
    text: str = "Returns are accepted within 45 days [1] ."
    fail_status: int | None = None  # answer every request with this status
    fail_next: int = 0  # answer the next N requests with 500
    retry_after: str | None = None  # Retry-After header on failures
    report_usage: bool = True
    prompt_tokens: int = 100
    model: str | None = None  # echo the requested model when None
    drop_after: int | None = None  # close the connection after this many streamed tokens
    # Compute the answer from the request's messages instead of `text`: returns (text, prompt_tokens).
    respond: Callable[[list[dict]], tuple[str, int]] | None = None


@dataclass
class Stats:
    requests: int = 0
    failures: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    models: list[str] = field(default_factory=list)
    requests_seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # (path, headers)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        # A client that gave up (timeout, deadline) closes its socket mid-answer: expected here.
        pass


class FakeOpenAI:
    """One fake replica; `url` is its OpenAI base URL (…/v1)."""

    def __init__(self, behaviour: Behaviour | None = None):
        self.behaviour = behaviour or Behaviour()
        self.stats = Stats()
        self._server = _Server(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _enter(self) -> tuple[Behaviour, bool]:
        with self.stats.lock:
            self.stats.requests += 1
            self.stats.in_flight += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
            b = self.behaviour
            fail = b.fail_status is not None or b.fail_next > 0
            if b.fail_next > 0:
                b.fail_next -= 1
            self.stats.failures += fail
            return b, fail

    def _leave(self) -> None:
        with self.stats.lock:
            self.stats.in_flight -= 1


def two_tiers(small: FakeOpenAI, large: FakeOpenAI, models: tuple[str, str], prices: dict) -> dict:
    """An `openai` generator config whose tiers `small` and `large` are these fakes, serving `models`."""
    tiers = {
        "small": {"model": models[0], "replicas": [small.url]},
        "large": {"model": models[1], "replicas": [large.url]},
    }
    return {"kind": "openai", "tiers": tiers, "prices": prices}


def _handler(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    return type("Handler", (_Handler,), {"fake": fake})


class _Handler(BaseHTTPRequestHandler):
    """Chat completions for the FakeOpenAI in `fake` (set per server by _handler)."""

    fake: FakeOpenAI
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        b, fail = self.fake._enter()
        try:
            self.fake.stats.models.append(body.get("model", ""))
            self.fake.stats.requests_seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            time.sleep(b.latency_s)
            if b.respond is not None and not fail:
                text, prompt_tokens = b.respond(body.get("messages", []))
                b = replace(b, text=text, prompt_tokens=prompt_tokens)
            if not self.path.split("?")[0].endswith("/chat/completions"):
                self._json(404, {"error": {"message": f"no route {self.path}"}})
            elif fail:
                extra = {"Retry-After": b.retry_after} if b.retry_after else {}
                self._json(b.fail_status or 500, {"error": {"message": "injected failure"}}, extra)
            elif body.get("stream"):
                self._stream(b, body)
            else:
                self._json(200, _completion(b, body))
        finally:
            self.fake._leave()

    def _json(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, b: Behaviour, body: dict) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        model = b.model or body.get("model", "")
        tokens = _tokens(b.text)
        for i, token in enumerate(tokens):
            if i == b.drop_after:
                self.close_connection = True
                return  # no terminating chunk: the client sees a broken stream
            if i:
                time.sleep(b.token_delay_s)
            self._event({"model": model, "choices": [{"index": 0, "delta": {"content": token}}]})
        if b.report_usage and (body.get("stream_options") or {}).get("include_usage"):
            self._event({"model": model, "choices": [], "usage": _usage(b, len(tokens))})
        self._chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def _event(self, payload: dict) -> None:
        self._chunk(f"data: {json.dumps(payload)}\n\n".encode())

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def _tokens(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _usage(b: Behaviour, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": b.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": b.prompt_tokens + completion_tokens,
    }


def _completion(b: Behaviour, body: dict) -> dict:
    out = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "model": b.model or body.get("model", ""),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": b.text}, "finish_reason": "stop"}],
    }
    if b.report_usage:
        out["usage"] = _usage(b, len(_tokens(b.text)))
    return out
