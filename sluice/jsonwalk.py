"""Walk JSON-like values with an explicit stack, so no input, however deep, can raise RecursionError.

Request bodies, filters and broker messages are measured with `walk` before anything recursive
(pickle, json.dumps, a recursive compiler, PostgreSQL's jsonb input) touches them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")


def walk(value: Any) -> Iterator[tuple[int, Any, Any]]:
    """Yield (depth, key, item) for `value` (depth 1) and everything inside it, each container before its items.

    `key` is the mapping key an item sits under, None for list items and the root. A consumer that
    stops at a container (too deep, too wide) never pays for its items: they are stacked on resume.
    """
    stack: list[tuple[int, Any, Any]] = [(1, None, value)]
    while stack:
        depth, key, item = stack.pop()
        yield depth, key, item
        if isinstance(item, dict):
            stack.extend((depth + 1, k, v) for k, v in item.items())
        elif isinstance(item, (list, tuple)):
            stack.extend((depth + 1, None, v) for v in item)


def text_problem(text: str) -> str | None:
    """Why PostgreSQL text or jsonb cannot hold this string, or None."""
    if "\x00" in text:
        return "strings must not contain the NUL character (U+0000)"
    if _SURROGATE.search(text):
        return "strings must be valid Unicode: remove the unpaired surrogate (U+D800-U+DFFF)"
    return None


def storable_problem(value: Any) -> str | None:
    """Why `value` cannot be stored as jsonb (NUL, lone surrogate, NaN or infinity anywhere in it), or None."""
    for _, key, item in walk(value):
        for part in (key, item):
            if isinstance(part, str) and (problem := text_problem(part)):
                return problem
        if isinstance(item, float) and not math.isfinite(item):
            return "numbers must be finite: NaN and Infinity (or a literal such as 1e400) have no JSON form"
    return None


def deeper_than(value: Any, limit: int) -> bool:
    """True when mappings and lists nest more than `limit` levels inside `value`."""
    return any(depth > limit for depth, _, _ in walk(value))
