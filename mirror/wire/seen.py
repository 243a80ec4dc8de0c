"""A bounded table of parsed values already seen, for the parsers' hot paths.

A client sends the same bytes in most of its ClientHello extensions and SYN options on every
connection. A parser that makes immutable values can keep each one it made under the bytes it
came from and hand out that same object when the bytes come again, instead of parsing them
again. ``SeenTable`` is a plain ``dict`` for the lookups (``get``, at C speed); ``keep`` adds an
entry and, once ``limit`` entries are there, forgets them all at once (no per-entry
bookkeeping on the hot path). What may be kept is the caller's decision.
"""

from __future__ import annotations

from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class SeenTable(dict[K, V], Generic[K, V]):
    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def keep(self, key: K, value: V) -> None:
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
