"""The `openai` generator: a cited-answer prompt sent through the gateway to a tier's replicas.

Registered in tasks/generate.py as a lazy entry, so this module is imported only when a config names it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Generator as Gen
from collections.abc import Mapping
from typing import Any

import numpy as np

from sluice.config import OpenAIGenerator
from tasks.embed import Embedder
from tasks.generate import (
    Answer,
    AnswerStream,
    Citation,
    Generator,
    Usage,
    rate,
)
from tasks.llm.gateway import Gateway
from tasks.llm.state import GatewayState
from tasks.pricing import cost_usd, count_tokens
from tasks.retrieve import Hit

SYSTEM_PROMPT = (
    "You answer questions using only the numbered context passages you are given. "
    "Cite the passage supporting each statement with its number in square brackets, like [1] or [2][3]. "
    "If the passages do not contain the answer, say that you cannot answer from the documents. "
    "Be brief."
)
_MARK = re.compile(r"\[(\d{1,3})\]")


def build_messages(question: str, contexts: list[Hit], max_chars: int) -> list[dict[str, str]]:
    """System prompt plus the numbered contexts (trimmed to `max_chars` in all) and the question."""
    blocks: list[str] = []
    budget = max_chars
    for n, hit in enumerate(contexts, 1):
        text = hit.text[: max(0, budget)]
        if not text:
            break
        budget -= len(text)
        blocks.append(f"[{n}] (source: {hit.source_id})\n{text}")
    user = "Context passages:\n\n" + "\n\n".join(blocks) + f"\n\nQuestion: {question}\nAnswer:"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def cited(text: str, contexts: list[Hit]) -> tuple[Citation, ...]:
    """The contexts the answer cites by [n], in order of first citation."""
    seen: list[int] = []
    for match in _MARK.finditer(text):
        n = int(match.group(1))
        if 1 <= n <= len(contexts) and n not in seen:
            seen.append(n)
    hits = (contexts[n - 1] for n in seen)
    return tuple(Citation(h.source_id, h.document_id, *h.citation, h.score) for h in hits)


class OpenAIChat(Generator):
    """Chat completions on OpenAI-compatible replicas (vLLM, Ollama, llama.cpp, OpenAI, Azure OpenAI)."""

    def __init__(
        self,
        config: OpenAIGenerator,
        embedder: Embedder,
        state: GatewayState | None = None,
        api_keys: Mapping[str, str] | None = None,
        gateway: Gateway | None = None,
        **_: Any,
    ):
        self.config = config
        self.embedder = embedder  # its tokenizer counts tokens when a server reports no usage
        self.gateway = gateway or Gateway(config, state, api_keys=api_keys)

    def generate(
        self, question: str, contexts: list[Hit], tier: str | None = None, vector: np.ndarray | None = None
    ) -> AnswerStream:
        return AnswerStream(self._run(question, contexts, tier or next(iter(self.config.tiers))))

    def _run(self, question: str, contexts: list[Hit], tier: str) -> Gen[str, None, Answer]:
        messages = build_messages(question, contexts, self.config.max_context_chars)
        t0 = time.perf_counter()
        first: float | None = None
        pieces = 0
        chat = self.gateway.chat(tier, messages)
        while True:
            try:
                piece = next(chat)
            except StopIteration as stop:
                completion = stop.value
                break
            first = first if first is not None else time.perf_counter()
            pieces += 1
            yield piece
        total_ms = (time.perf_counter() - t0) * 1000
        ttft_ms = ((first or time.perf_counter()) - t0) * 1000
        usage = self._usage(completion.usage, messages, completion.text)
        cost = cost_usd(self.config.prices, completion.model, usage.prompt_tokens, usage.completion_tokens)
        return Answer(
            completion.text,
            cited(completion.text, contexts),
            usage,
            completion.model,
            completion.tier,
            completion.replica,
            ttft_ms,
            total_ms,
            rate(usage.completion_tokens, total_ms, ttft_ms, pieces),
            cost,
            tuple(completion.attempts),
        )

    def _usage(self, reported: dict[str, int] | None, messages: list[dict[str, str]], text: str) -> Usage:
        if reported and "prompt_tokens" in reported and "completion_tokens" in reported:
            return Usage(int(reported["prompt_tokens"]), int(reported["completion_tokens"]))
        tok = self.embedder.tokenizer
        return Usage(count_tokens(tok, *(m["content"] for m in messages)), count_tokens(tok, text), estimated=True)
