"""A minimal OpenAI chat-completions client over httpx: streaming (SSE) and not."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx


class ReplicaError(Exception):
    """One attempt on one replica failed (status, timeout, connection, malformed body)."""

    def __init__(
        self, message: str, status: int | None = None, timeout: bool = False, retry_after: float | None = None
    ):
        super().__init__(message)
        self.status = status
        self.timeout = timeout
        self.retry_after = retry_after  # seconds the replica asked us to stay away (429/503 Retry-After)


MAX_RETRY_AFTER_S = 600.0  # a replica cannot bench itself for longer than this


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header in seconds (delta-seconds or an HTTP date), clamped to [0, 600]; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value) if value.replace(".", "", 1).isdigit() else None
        if seconds is None:
            seconds = parsedate_to_datetime(value).timestamp() - (time.time() if now is None else now)
    except (TypeError, ValueError, OverflowError):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _status_error(resp: httpx.Response) -> ReplicaError:
    retry = retry_after_s(resp.headers.get("retry-after")) if resp.status_code in (429, 503) else None
    return ReplicaError(f"HTTP {resp.status_code}: {resp.text[:200]}", resp.status_code, retry_after=retry)


@dataclass(frozen=True)
class Chunk:
    text: str = ""
    usage: dict[str, int] | None = None
    model: str | None = None


def make_http_client() -> httpx.Client:
    """One pooled client per gateway; environment proxies ignored (replicas are named explicitly)."""
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    return httpx.Client(trust_env=False, limits=limits)


def auth_headers(api_key: str | None, header: str) -> dict[str, str]:
    """The key in the header the provider expects (none without a key)."""
    if not api_key:
        return {}
    return {"api-key": api_key} if header == "api-key" else {"Authorization": f"Bearer {api_key}"}


def _timeout(seconds: float) -> httpx.Timeout:
    return httpx.Timeout(seconds, connect=min(seconds, 3.0))


def chat_stream(
    http: httpx.Client, base_url: str, payload: dict[str, Any], timeout_s: float, headers: dict[str, str]
) -> Iterator[Chunk]:
    """POST a streaming chat completion; yield text deltas and, last, the usage when the server sends it.

    Put `stream_options: {include_usage: true}` in `payload` to ask for the usage.
    """
    body = {**payload, "stream": True}
    try:
        with http.stream("POST", _url(base_url), json=body, headers=headers, timeout=_timeout(timeout_s)) as resp:
            if resp.status_code != 200:
                resp.read()
                raise _status_error(resp)
            for line in resp.iter_lines():
                chunk = _parse_sse_line(line)
                if chunk is None:
                    # A keep-alive comment (llama.cpp's server pings every 15 s while a request waits its
                    # turn) resets the read timeout: hand the caller an empty chunk so it can check its deadline.
                    if line.startswith(":"):
                        yield Chunk()
                    continue
                if chunk is _DONE:
                    return
                yield chunk
    except httpx.TimeoutException as exc:
        raise ReplicaError(f"timeout ({type(exc).__name__})", timeout=True) from exc
    except httpx.HTTPError as exc:
        raise ReplicaError(f"{type(exc).__name__}: {exc}") from exc


def chat_once(
    http: httpx.Client, base_url: str, payload: dict[str, Any], timeout_s: float, headers: dict[str, str]
) -> Chunk:
    """POST a non-streaming chat completion and return its text, usage and model."""
    try:
        resp = http.post(
            _url(base_url),
            json={**_without(payload, "stream_options"), "stream": False},
            headers=headers,
            timeout=_timeout(timeout_s),
        )
    except httpx.TimeoutException as exc:
        raise ReplicaError(f"timeout ({type(exc).__name__})", timeout=True) from exc
    except httpx.HTTPError as exc:
        raise ReplicaError(f"{type(exc).__name__}: {exc}") from exc
    if resp.status_code != 200:
        raise _status_error(resp)
    try:
        body = resp.json()
        text = body["choices"][0]["message"]["content"] or ""
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ReplicaError(f"malformed completion: {resp.text[:200]}") from exc
    return Chunk(text, body.get("usage"), body.get("model"))


_DONE = Chunk()


def _without(payload: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k != key}


def _url(base_url: str) -> httpx.URL:
    # Keep a query string (Azure's ?api-version=…) after the appended path.
    url = httpx.URL(base_url)
    return url.copy_with(path=url.path.rstrip("/") + "/chat/completions")


def _parse_sse_line(line: str) -> Chunk | None:
    if not line.startswith("data:"):
        return None  # comments, event names, keep-alives, blank separators
    data = line[5:].strip()
    if data == "[DONE]":
        return _DONE
    try:
        event = json.loads(data)
    except ValueError as exc:
        raise ReplicaError(f"malformed SSE event: {data[:200]}") from exc
    choices = event.get("choices") or []
    delta = (choices[0].get("delta") or {}).get("content") if choices else None
    return Chunk(delta or "", event.get("usage"), event.get("model"))
