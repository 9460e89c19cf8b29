"""The `openai` generator: a cited-answer prompt sent through the gateway to a tier's replicas.

Registered in tasks/generate.py as a lazy entry, so this module is imported only when a config names it.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Generator as Gen
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from sluice.config import DEFAULT_SYSTEM_PROMPT, ExtractiveGenerator, OpenAIGenerator, PromptConfig
from sluice.errors import ConfigError, GenerationError
from tasks.embed import Embedder
from tasks.generate import (
    Answer,
    AnswerStream,
    Citation,
    ExtractiveAnswerer,
    Generator,
    Usage,
    rate,
)
from tasks.llm.gateway import Gateway
from tasks.llm.state import GatewayState
from tasks.pricing import cost_usd, count_tokens
from tasks.retrieve import Hit

SYSTEM_PROMPT = DEFAULT_SYSTEM_PROMPT  # the default `generator.prompt.system`


class Tokenizer(Protocol):
    """A model's own tokenizer (tasks/llm/local.py: GGUFTokenizer)."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class _Budget:
    """What is left of the context budget: characters, or the model's tokens when it has a tokenizer."""

    def __init__(self, limit: int, tokenizer: Tokenizer | None = None):
        self.left = limit
        self.tokenizer = tokenizer

    def take(self, text: str) -> str:
        """The head of `text` that still fits; the budget shrinks by it."""
        if self.tokenizer is None:
            piece = text[: max(0, self.left)]
            self.left -= len(piece)
            return piece
        ids = self.tokenizer.encode(text)[: max(0, self.left)]
        self.left -= len(ids)
        return self.tokenizer.decode(ids) if ids else ""


def build_messages(
    question: str,
    contexts: list[Hit],
    max_chars: int,
    prompt: PromptConfig | None = None,
    tokenizer: Tokenizer | None = None,
) -> list[dict[str, str]]:
    """System prompt plus the numbered contexts (trimmed to the budget in all) and the question.

    The budget is `prompt.context_tokens` of the model's tokens when a tokenizer is given, else
    `max_chars` characters; it counts passage text, not the marks and source names around it.
    """
    prompt = prompt or PromptConfig()
    tokens = tokenizer is not None and prompt.context_tokens is not None
    budget = _Budget(prompt.context_tokens, tokenizer) if tokens else _Budget(max_chars)
    blocks: list[str] = []
    for n, hit in enumerate(contexts, 1):
        text = budget.take(hit.text)
        if not text:
            break
        blocks.append(f"{prompt.citation.format(n=n)} (source: {hit.source_id})\n{text}")
    user = "Context passages:\n\n" + "\n\n".join(blocks) + f"\n\nQuestion: {question}\nAnswer:"
    return [{"role": "system", "content": prompt.system}, {"role": "user", "content": user}]


@functools.lru_cache(maxsize=16)
def _mark(citation: str) -> re.Pattern[str]:
    before, after = citation.split("{n}")
    return re.compile(re.escape(before) + r"(\d{1,3})" + re.escape(after))


def cited(text: str, contexts: list[Hit], citation: str = "[{n}]") -> tuple[Citation, ...]:
    """The contexts the answer cites (marks in the `citation` format), in order of first citation."""
    seen: list[int] = []
    for match in _mark(citation).finditer(text):
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
        data_dir: Path | None = None,
        **_: Any,
    ):
        self.config = config
        self.prompt = config.prompt or PromptConfig()
        self.embedder = embedder  # its tokenizer counts tokens when a server reports no usage
        self.gateway = gateway or Gateway(config, state, api_keys=api_keys)
        self.data_dir = data_dir  # where a chunked packaged model is assembled (its tokenizer is read from it)
        self._tokenizers: dict[str, Tokenizer | None] = {}

    def generate(
        self, question: str, contexts: list[Hit], tier: str | None = None, vector: np.ndarray | None = None
    ) -> AnswerStream:
        return AnswerStream(self._run(question, contexts, tier or next(iter(self.config.tiers)), vector))

    def tokenizer(self, tier: str) -> Tokenizer | None:
        """The tier's own tokenizer for the context budget (None: the budget is in characters)."""
        if tier not in self._tokenizers:
            name = self.config.tiers[tier].tokenizer
            if name is None or self.prompt.context_tokens is None:
                self._tokenizers[tier] = None
            else:
                from tasks.llm.local import GGUFTokenizer  # the `llm` extra; only configs naming one need it

                if self.data_dir is None:
                    raise ConfigError(f"tier {tier!r} names tokenizer {name!r}: build the generator with a data_dir")
                self._tokenizers[tier] = GGUFTokenizer(name, self.data_dir)
        return self._tokenizers[tier]

    def _run(self, question: str, contexts: list[Hit], tier: str, vector: np.ndarray | None) -> Gen[str, None, Answer]:
        messages = build_messages(question, contexts, self.config.max_context_chars, self.prompt, self.tokenizer(tier))
        t0 = time.perf_counter()
        first: float | None = None
        pieces, sent = 0, ""
        chat = self.gateway.chat(tier, messages)
        while True:
            try:
                piece = next(chat)
            except StopIteration as stop:
                completion = stop.value
                break
            except GenerationError as exc:
                if sent.strip() or not self.config.fallback_extractive:  # after text, no other answer may follow
                    raise
                return (yield from self._extractive(question, contexts, vector, exc))
            first = first if first is not None else time.perf_counter()
            pieces, sent = pieces + 1, sent + piece
            yield piece
        total_ms = (time.perf_counter() - t0) * 1000
        ttft_ms = ((first or time.perf_counter()) - t0) * 1000
        return self._answer(completion, messages, contexts, total_ms, ttft_ms, pieces)

    def _answer(
        self,
        completion: Any,
        messages: list[dict[str, str]],
        contexts: list[Hit],
        total_ms: float,
        ttft_ms: float,
        pieces: int,
    ) -> Answer:
        usage = self._usage(completion.usage, messages, completion.text)
        cost = cost_usd(self.config.prices, completion.model, usage.prompt_tokens, usage.completion_tokens)
        return Answer(
            completion.text,
            cited(completion.text, contexts, self.prompt.citation),
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

    def _extractive(
        self, question: str, contexts: list[Hit], vector: np.ndarray | None, failure: GenerationError
    ) -> Gen[str, None, Answer]:
        """Every tier failed before any text: the free extractive answer, its tier `extractive`, the failure kept."""
        extractive = ExtractiveAnswerer(ExtractiveGenerator(), self.embedder)
        stream = extractive.generate(question, contexts, "extractive", vector)
        yield from stream
        assert stream.answer is not None
        return replace(stream.answer, attempts=(str(failure),))

    def _usage(self, reported: dict[str, int] | None, messages: list[dict[str, str]], text: str) -> Usage:
        if reported and "prompt_tokens" in reported and "completion_tokens" in reported:
            return Usage(int(reported["prompt_tokens"]), int(reported["completion_tokens"]))
        tok = self.embedder.tokenizer
        return Usage(count_tokens(tok, *(m["content"] for m in messages)), count_tokens(tok, text), estimated=True)
