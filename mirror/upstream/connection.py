"""What an upstream TLS connection is, whichever engine made it, and how opening one fails.

An engine connects to an ``UpstreamTarget``, completes a handshake that mirrors the client's
``RelayPlan``, and hands the relay an ``UpstreamConnection``: the ALPN protocol the server
chose, the socket the event loop watches, and non-blocking plaintext reads and writes.
Failures are ``UpstreamError`` with the stage that failed (the capture record and the 502's
``X-Mirror-Error`` name it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

POLICY_STAGE = "upstream-tls-policy"


class UpstreamError(Exception):
    """The upstream connection failed; ``stage`` says where, ``timeout`` whether it timed out."""

    def __init__(self, message: str, stage: str = "upstream-connect") -> None:
        super().__init__(message)
        self.stage = stage

    @property
    def timeout(self) -> bool:
        return self.stage == "upstream-timeout"


@dataclass(slots=True, frozen=True)
class UpstreamTarget:
    """Where to connect (``host`` is an address or a name to resolve) and what SNI to send."""

    host: str
    port: int
    sni: str | None


class UpstreamConnection(Protocol):
    """A connected, verified upstream TLS connection carrying raw application bytes.

    ``fd`` is the socket the event loop watches for readiness (the engine owns it);
    ``recv_into`` and ``send`` never block and raise ``UpstreamError`` (stage ``relay``).
    """

    alpn: str | None      # the protocol the server chose, or None
    fd: int
    closed: bool
    holds_output: bool    # ``send`` may accept bytes it has not written yet (``flush`` does)
    engine: str           # "boringssl" | "replay": which engine made it (the capture says)
    engine_reason: str    # why that engine

    def recv_into(self, buffer: bytearray | memoryview) -> int | None:
        """Plaintext bytes read into ``buffer``; ``None`` if nothing is ready; 0 at the end."""
        ...

    def send(self, data: bytes | memoryview, record_sizes: list[int] | None = None) -> int:
        """Plaintext bytes accepted (0 when the socket is full: wait until it is writable).
        ``record_sizes``: the plaintext lengths of the client's records that carried ``data``,
        for an engine that sends records of the same lengths."""
        ...

    def flush(self) -> bool:
        """Write what was accepted but is not on the wire yet; True when nothing is left."""
        ...

    def close(self) -> None:
        """Stop using the connection now (idempotent)."""
        ...
