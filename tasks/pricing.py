"""Token usage and its price: one token count and one price model (`ModelPrice`, per million tokens)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sluice.config import ModelPrice


def count_tokens(tokenizer: Any, *texts: str) -> int:
    """Tokens in `texts` by the embedder's own tokenizer (never tiktoken: it downloads its encodings)."""
    texts = tuple(t for t in texts if t)
    if not texts:
        return 0
    return sum(len(ids) for ids in tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"])


def cost_usd(prices: Mapping[str, ModelPrice], model: str, prompt_tokens: int, completion_tokens: int) -> float:
    """Cost of one call; a model absent from the table costs 0 (self-hosted, or not priced yet)."""
    price = prices.get(model)
    return 0.0 if price is None else price.cost(prompt_tokens, completion_tokens)
