"""Shared pieces of the parsers' property tests: settings, and byte-level mutations of valid
inputs (replace / insert / delete at random places) so that Hypothesis explores the space near
real messages, not only random bytes."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ_SETTINGS = settings(max_examples=300, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow])


def edits(max_position: int, values=None, max_size: int = 8):
    """Lists of (kind 0 replace / 1 insert / 2 delete, position, byte value)."""
    return st.lists(st.tuples(st.integers(0, 2), st.integers(0, max_position),
                              values if values is not None else st.integers(0, 255)),
                    max_size=max_size)


def mutate(data: bytes, changes: list[tuple[int, int, int]]) -> bytes:
    """Apply ``edits`` to ``data``; positions wrap around its current length."""
    out = bytearray(data)
    for kind, position, value in changes:
        if not out:
            out.append(value)
            continue
        position %= len(out)
        if kind == 0:
            out[position] = value
        elif kind == 1:
            out.insert(position, value)
        else:
            del out[position]
    return bytes(out)
