"""Turn token usage into money with the config's price table."""

from __future__ import annotations

from collections.abc import Mapping

from sluice.config import ModelPrice


def cost_usd(prices: Mapping[str, ModelPrice], model: str, prompt_tokens: int, completion_tokens: int) -> float:
    """Cost of one call; a model absent from the table costs 0 (self-hosted, or not priced yet)."""
    price = prices.get(model)
    if price is None:
        return 0.0
    return (prompt_tokens * price.input_per_mtok + completion_tokens * price.output_per_mtok) / 1_000_000
