"""One name -> method table for every kind of step (a leaf module: anyone may import it).

Like PEFT's mapping from tuner type to (config class, model class), a `MethodTable` maps a method
name to its entry (config dataclass + implementation). Quantize schemes, prune methods and tune
methods each keep one, so the CLI, recipes and docs list methods from one place and an unknown
name is always the same clear ConfigError naming the choices. Tables may name modules whose
import registers more entries; they are imported on first lookup, so listing never misses one.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Generic, TypeVar

from llmpress.errors import ConfigError

T = TypeVar("T")


class MethodTable(Mapping[str, T], Generic[T]):
    """name -> entry, read like a dict; `register` adds, `get_method` looks up with a clear error."""

    def __init__(self, kind: str, entries: Mapping[str, T] | None = None, modules: Iterable[str] = (),
                 param: str | None = None) -> None:
        self.kind = kind  # "quantization scheme", "prune method", ... (used in error messages)
        self.param = param  # the CLI option naming it, for the error
        self._entries: dict[str, T] = dict(entries or {})
        self._modules = tuple(modules)
        self._loaded = not self._modules

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True  # before importing: the modules register into this table
            for m in self._modules:
                importlib.import_module(m)

    def register(self, name: str, entry: T) -> T:
        """Add `entry` under `name` (a module registering twice, e.g. on reload, replaces it)."""
        self._entries[name] = entry
        return entry

    def get_method(self, name: str) -> T:
        """The entry for `name`, or a ConfigError listing the known names."""
        self._load()
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r}", f"use one of: {', '.join(self._entries)}",
                              param=self.param)
        return self._entries[name]

    def names(self) -> list[str]:
        self._load()
        return list(self._entries)

    def __getitem__(self, name: str) -> T:
        self._load()
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self._load()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"MethodTable({self.kind!r}, {list(self._entries)})"
