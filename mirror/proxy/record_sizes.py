"""Which of the client's record lengths carried the bytes that go upstream now.

The replay engine writes the client's plaintext upstream in records of the client's own
lengths. Between the two the HTTP/1 observer holds an unfinished request head back until it is
whole, so the bytes forwarded by one read can start with bytes of earlier reads: their lengths
must come along. ``RecordSizes`` keeps the lengths of what was received and not yet forwarded
and hands out, per forward, the lengths that cover it, oldest first (no I/O).
"""

from __future__ import annotations


class RecordSizes:
    """Record lengths of plaintext received but not yet forwarded upstream."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held: list[int] = []

    def forward(self, received: list[int], forwarded: int) -> list[int]:
        """The lengths of the records that carried the next ``forwarded`` bytes, given the
        lengths of the records just ``received``. A record only partly forwarded is split: its
        rest waits for the next forward. Bytes beyond every length known (a rewritten head
        grew) get none: the engine cuts them at its own limit."""
        if not self._held and sum(received) == forwarded:
            return received                 # the common case: nothing held, nothing left
        pending = self._held + received
        out: list[int] = []
        left = forwarded
        taken = 0
        for size in pending:
            if left <= 0:
                break
            part = min(size, left)
            out.append(part)
            left -= part
            taken += 1
            if part < size:
                pending[taken - 1] = size - part
                taken -= 1
                break
        self._held = pending[taken:]
        return out
