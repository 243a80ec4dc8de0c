"""Record values computed when the record is written, on the store's writer thread.

A connection's full reports (every ClientHello field in hex, the emitted fingerprint as JSON)
are only needed in the stored record. Putting ``Deferred(function, *args)`` in the record
instead keeps that work, and the memory those dicts take while a connection is open, off the
proxy's event loop: ``resolve`` makes the values when the store encodes the record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("mirror.store")


class Deferred:
    """``function(*args)``, called once, by ``resolve``; what it returns must not itself
    contain a ``Deferred``."""

    __slots__ = ("args", "function")

    def __init__(self, function: Callable[..., Any], *args: Any) -> None:
        self.function = function
        self.args = args

    def value(self) -> Any:
        return self.function(*self.args)

    def __repr__(self) -> str:
        return f"Deferred({getattr(self.function, '__name__', self.function)!r})"


def resolve(value: Any, _path: frozenset[int] = frozenset()) -> Any:
    """``value`` with every ``Deferred`` inside it (dicts and lists, any depth) replaced by
    what it computes. A computation that fails becomes ``{"error": ...}`` and is logged: one
    bad value must not lose the record. A container that holds itself is left as it is (the
    store's encoder reports it)."""
    if isinstance(value, Deferred):
        try:
            return value.value()          # what it makes holds no Deferred: not walked again
        except Exception as error:  # the record is kept, the failure recorded
            log.exception("computing a capture record's %r failed", value)
            return {"error": f"{type(error).__name__}: {error}"}
    if isinstance(value, (dict, list)):
        if id(value) in _path:
            return value
        inner = _path | {id(value)}
        if isinstance(value, dict):
            made = {key: resolve(item, inner) for key, item in value.items()}
            same = all(made[key] is item for key, item in value.items())
        else:
            made = [resolve(item, inner) for item in value]
            same = all(new is old for new, old in zip(made, value, strict=True))
        return value if same else made        # untouched containers stay the same objects
    return value
