"""One registry per plug-in kind: entries by name, built from a config, lazy `module:attr` entries.

A plug-in is one class and one registration, next to the others of its kind:

    CHUNKERS = Registry("chunker kind", key="kind")

    @CHUNKERS.register("recursive")
    class RecursiveCharacterChunker(Chunker): ...

    GENERATORS.register("openai", "tasks.llm.openai:OpenAIChat")  # imported on first use

`CHUNKERS.build(config, embedder)` calls the entry that `config.kind` names with `(config, embedder)`.
A lazy entry keeps a heavy or optional dependency out of the imports of everyone who does not use it,
and lets a plug-in module import its kind's contract without the contract importing it back.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from sluice.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """The named entries of one plug-in kind, in registration order."""

    def __init__(self, what: str, key: str = "kind"):
        self.what = what  # names the kind in errors: "unknown chunker kind 'x': use one of [...]"
        self.key = key  # the config attribute that names an entry
        self._entries: dict[str, T | str] = {}

    def register(self, name: str, entry: T | str | None = None) -> Any:
        """Add `entry` under `name`, or use as a decorator; a `"module:attr"` string is resolved on first use."""
        if entry is None:
            return lambda obj: self._add(name, obj)
        return self._add(name, entry)

    def _add(self, name: str, entry: T | str) -> T | str:
        if name in self._entries:
            raise ConfigError(f"{self.what} {name!r} is registered twice: give the new one another name")
        if isinstance(entry, str) and entry.count(":") != 1:
            raise ConfigError(f"{self.what} {name!r}: lazy entry {entry!r} must read 'package.module:attribute'")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """The entry registered as `name`, imported now if it was lazy."""
        try:
            entry = self._entries[name]
        except KeyError:
            raise ConfigError(f"unknown {self.what} {name!r}: use one of {self.names()}") from None
        if isinstance(entry, str):
            entry = self._entries[name] = self._resolve(name, entry)
        return entry

    def _resolve(self, name: str, target: str) -> T:
        module, attr = target.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"{self.what} {name!r} cannot be loaded from {target!r}: {exc}") from exc

    def build(self, config: Any, *args: Any, **kwargs: Any) -> Any:
        """Call the entry the config's `key` attribute names with the config and the rest."""
        factory: Callable[..., Any] = self.get(getattr(config, self.key))  # type: ignore[assignment]
        return factory(config, *args, **kwargs)

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """(name, entry) pairs in registration order, lazy entries imported."""
        return [(name, self.get(name)) for name in list(self._entries)]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)
