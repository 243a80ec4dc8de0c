"""How faithfully one field of a client's original was re-sent upstream: ``FieldFidelity``.

A plain value shared by every layer that plans or reports a mirrored field: ``emit`` (TLS,
HTTP/2 and SYN plans), ``net`` (what our SYN carried) and the capture record. ``exact`` (the
wire carries the same value), ``approximated`` (sent, but not byte-identical; ``detail`` says
how) or ``impossible`` (cannot be sent; ``detail`` says why). Imports nothing of mirror.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["exact", "approximated", "impossible"]


@dataclass(slots=True, frozen=True)
class FieldFidelity:
    """How faithfully one field of the original will be re-sent."""

    status: Status
    detail: str = ""

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        # pickled as its two strings: the dataclass default walks fields() on every call,
        # about 20 times slower, and a capture record carries one of these per field
        return (FieldFidelity, (self.status, self.detail))
