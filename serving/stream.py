"""How an answer is cut into streamed pieces, shared by the worker (publisher) and the API (SSE)."""

from __future__ import annotations

import json


def answer_pieces(answer: str) -> list[str]:
    """Cut an extractive answer after each citation marker; the pieces concatenate to the answer."""
    pieces, start = [], 0
    while (end := answer.find("] ", start)) != -1:
        pieces.append(answer[start : end + 2])
        start = end + 2
    if start < len(answer):
        pieces.append(answer[start:])
    return pieces


def sse(event: str, data: object) -> str:
    """One Server-Sent Event."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
