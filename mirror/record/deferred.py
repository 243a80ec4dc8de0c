"""Record values computed when the record is written, on the store's writer thread.

A connection's full reports (every ClientHello field in hex, the emitted fingerprint as JSON)
are only needed in the stored record. Putting ``Deferred(function, *args)`` in the record
instead keeps that work, and the memory those dicts take while a connection is open, off the
proxy's event loop: ``resolve`` makes the values when the store encodes the record.

A record goes to the store's process pickled, on the event loop: a ``Deferred`` pickles as
its function's importable name and its arguments (:meth:`Deferred.__reduce__`), which costs a
fraction of pickling a slotted object and its function the generic way. A function that
cannot be found again by its name (a lambda, a nested function) does not pickle.
"""

from __future__ import annotations

import importlib
import logging
import pickle
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

    def __reduce__(self) -> tuple[Callable[..., Deferred], tuple[str, tuple[Any, ...]]]:
        name = _NAMES.get(self.function)
        if name is None:
            name = _importable_name(self.function)
        return _deferred_named, (name, self.args)

    def __repr__(self) -> str:
        return f"Deferred({getattr(self.function, '__name__', self.function)!r})"


_NAMES: dict[Callable[..., Any], str] = {}      # function -> "module:qualname", once checked
_FUNCTIONS: dict[str, Callable[..., Any]] = {}  # the reverse, where records are unpickled


def _importable_name(function: Callable[..., Any]) -> str:
    """``function``'s "module:qualname", once checked to name that very function."""
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str) and "<" not in qualname:
        name = f"{module}:{qualname}"
        try:
            found = _function_named(name)
        except (ImportError, AttributeError):
            found = None
        if found is function:
            _NAMES[function] = name
            return name
    raise pickle.PicklingError(f"{function!r} cannot be found again by its name")


def _function_named(name: str) -> Callable[..., Any]:
    function = _FUNCTIONS.get(name)
    if function is None:
        module, _, qualname = name.partition(":")
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
        function = _FUNCTIONS[name] = found
    return function


def _deferred_named(name: str, args: tuple[Any, ...]) -> Deferred:
    """A pickled ``Deferred`` made again (:meth:`Deferred.__reduce__`)."""
    return Deferred(_function_named(name), *args)


MAX_DEPTH = 64


def resolve(value: Any, _depth: int = 0) -> Any:
    """``value`` with every ``Deferred`` inside it (in plain dicts and lists, any depth up to
    :data:`MAX_DEPTH`) replaced by what it computes, and every ``DeferredFields`` held in a
    dict by the fields it makes. A computation that fails becomes ``{"error": ...}`` and is
    logged: one bad value must not lose the record. Containers with nothing to make are
    returned as they are (the same objects), so a container that holds itself is left as it
    is (the store's encoder reports it)."""
    kind = type(value)
    if kind is Deferred or kind is DeferredFields:
        return _made(value)[0]            # what it makes holds no Deferred: not walked again
    if _depth >= MAX_DEPTH:
        return value
    if kind is dict or kind is list:
        made = None
        for key, item in (value.items() if kind is dict else enumerate(value)):
            item_kind = type(item)
            if item_kind in _WALKED:
                if item_kind is DeferredFields and kind is dict:
                    new, fields = _made(item)
                else:
                    new, fields = resolve(item, _depth + 1), False
                if new is not item:
                    if made is None:
                        made = kind(value)        # a copy: the caller's record is not changed
                    if fields and isinstance(made, dict):
                        del made[key]
                        made.update(new)
                    else:
                        made[key] = new
        return value if made is None else made
    return value


def _made(deferred: Deferred) -> tuple[Any, bool]:
    """What ``deferred`` makes, and whether it made it (else: the error, as the value)."""
    try:
        return deferred.value(), True
    except Exception as error:  # the record is kept, the failure recorded
        log.exception("computing a capture record's %r failed", deferred)
        return {"error": f"{type(error).__name__}: {error}"}, False


class DeferredFields(Deferred):
    """A ``Deferred`` whose function makes a dict of fields: held in a dict (under the key of
    one of those fields, say), ``resolve`` puts the fields in that dict in its place. A
    request's four JA4H strings, say, are made from its method and headers, which the record
    holds anyway, by the store's writer instead of the event loop."""

    __slots__ = ()

    def __reduce__(self) -> tuple[Callable[..., Deferred], tuple[str, tuple[Any, ...]]]:
        _, named = super().__reduce__()
        return _fields_named, named


def _fields_named(name: str, args: tuple[Any, ...]) -> DeferredFields:
    """A pickled ``DeferredFields`` made again."""
    return DeferredFields(_function_named(name), *args)


_WALKED = frozenset({Deferred, DeferredFields, dict, list})
