"""A real OpenAI-compatible HTTP server on 127.0.0.1 acting as a deterministic RAGAS judge.

It answers `POST /v1/chat/completions` (with `n` choices) and `POST /v1/embeddings`. The judge
reads the JSON schema RAGAS puts in each prompt to know which answer shape is wanted, then judges
by word overlap, so verdicts depend on the evidence and are not constants. Prompts that contain the
server's `malformed_marker` get the kind of prose a weak model writes instead of the JSON asked for.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

_WORD = re.compile(r"[a-z0-9]+")
MALFORMED = 'Sure! Here is the answer: {"statements": ["the frame", verdict: yes'


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if len(w) > 2}


def _overlap(claim: str, evidence: str) -> float:
    words = _words(claim)
    return len(words & _words(evidence)) / len(words) if words else 0.0


def _json_after(prompt: str, marker: str) -> dict:
    start = prompt.rindex(marker) + len(marker)
    return json.JSONDecoder().raw_decode(prompt[start:].lstrip())[0]


def judge(prompt: str) -> dict:
    """The answer a careful judge would give, in the schema the prompt asks for."""
    schema = _json_after(prompt, "JSON Schema:\n")
    data = _json_after(prompt, "input: ")
    title = schema.get("title")
    if title == "StatementGeneratorOutput":
        sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", data["answer"]) if s.strip()]
        return {"statements": sentences or [data["answer"]]}
    if title == "NLIStatementOutput":
        return {
            "statements": [
                {"statement": s, "reason": "word overlap", "verdict": int(_overlap(s, data["context"]) >= 0.6)}
                for s in data["statements"]
            ]
        }
    if title == "ResponseRelevanceOutput":
        return {"question": data["response"], "noncommittal": int("no relevant passage" in data["response"].lower())}
    if title == "Verification":
        return {"reason": "word overlap", "verdict": int(_overlap(data["answer"], data["context"]) >= 0.3)}
    raise ValueError(f"unknown output schema {title!r}")


class _Handler(BaseHTTPRequestHandler):
    server: JudgeServer

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, body))
        if self.path.endswith("/chat/completions"):
            payload = self._chat(body)
        elif self.path.endswith("/embeddings"):
            payload = self._embeddings(body)
        else:
            self.send_error(404)
            return
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chat(self, body: dict) -> dict:
        prompt = "\n".join(m["content"] for m in body["messages"] if isinstance(m.get("content"), str))
        marker = self.server.malformed_marker
        content = MALFORMED if marker and marker in prompt else json.dumps(judge(prompt))
        choices = [
            {"index": i, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            for i in range(int(body.get("n") or 1))
        ]
        usage = {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(content) // 4}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {
            "id": f"chatcmpl-{len(self.server.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "judge"),
            "choices": choices,
            "usage": usage,
        }

    def _embeddings(self, body: dict) -> dict:
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        rows = []
        for i, text in enumerate(texts):
            vec = np.zeros(64)
            for word in _words(str(text)):
                vec[hash(word) % 64] += 1.0
            vec /= max(np.linalg.norm(vec), 1e-9)
            rows.append({"object": "embedding", "index": i, "embedding": vec.tolist()})
        return {"object": "list", "data": rows, "model": body.get("model", "judge"), "usage": {"prompt_tokens": 0}}


class JudgeServer(ThreadingHTTPServer):
    """Start with `with JudgeServer() as s:`; `s.base_url` is the OpenAI base URL."""

    def __init__(self, malformed_marker: str | None = None):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.malformed_marker = malformed_marker
        self.requests: list[tuple[str, dict]] = []
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def __enter__(self) -> JudgeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
