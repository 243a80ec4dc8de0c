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


MAX_DEPTH = 64


def resolve(value: Any, _depth: int = 0) -> Any:
    """``value`` with every ``Deferred`` inside it (in plain dicts and lists, any depth up to
    :data:`MAX_DEPTH`) replaced by what it computes. A computation that fails becomes
    ``{"error": ...}`` and is logged: one bad value must not lose the record. Containers with
    nothing to make are returned as they are (the same objects), so a container that holds
    itself is left as it is (the store's encoder reports it)."""
    kind = type(value)
    if kind is Deferred:
        try:
            return value.value()          # what it makes holds no Deferred: not walked again
        except Exception as error:  # the record is kept, the failure recorded
            log.exception("computing a capture record's %r failed", value)
            return {"error": f"{type(error).__name__}: {error}"}
    if _depth >= MAX_DEPTH:
        return value
    if kind is dict or kind is list:
        made = None
        for key, item in (value.items() if kind is dict else enumerate(value)):
            if type(item) in _WALKED:
                new = resolve(item, _depth + 1)
                if new is not item:
                    if made is None:
                        made = kind(value)        # a copy: the caller's record is not changed
                    made[key] = new
        return value if made is None else made
    return value


_WALKED = frozenset({Deferred, dict, list})
