"""What the proxy's sans-I/O fronts decide, as frozen values the connection acts on.

A front (``http_front``, ``socks_front``, ``sniff``) is fed the client's bytes and answers
with a :class:`FrontStep`: bytes to send back now, and a decision once it has one. The
decisions are :class:`Tunnel` (relay the bytes that follow to a destination), :class:`Forward`
(plain HTTP requests in absolute form, rewritten for the origin), :class:`Refusal` (say why,
close), and the first-bytes kinds :class:`TlsHello`, :class:`PlainHttp`, :class:`RawBytes`.
:func:`refusal_of` turns a :class:`~mirror.wire.errors.WireError` into the one refusal the
client gets (a 400 where it speaks HTTP/1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mirror.proxy.error_reply import http1_error
from mirror.wire.errors import WireError


@dataclass(frozen=True, slots=True)
class Destination:
    """Where the client is going and how the proxy learnt it ("connect", "socks5", ...)."""

    host: str
    port: int
    how: str


@dataclass(frozen=True, slots=True)
class Tunnel:
    """Relay what follows to ``destination``; ``rest`` arrived after the front's request."""

    destination: Destination
    rest: bytes = b""


@dataclass(frozen=True, slots=True)
class Forward:
    """Plain HTTP to ``destination``: ``data`` (the first request onwards) goes through an
    HTTP/1 observer with ``rewrite`` (absolute-form targets made origin-form)."""

    destination: Destination
    data: bytes
    rewrite: Callable[[Any], bytes]


@dataclass(frozen=True, slots=True)
class Refusal:
    """The client is refused: ``stage`` and ``message`` go to the capture record, ``logged``
    to the log line (``"stage: message"`` when empty); ``destination`` when one was named."""

    stage: str
    message: str
    logged: str = ""
    destination: Destination | None = None

    @property
    def log_line(self) -> str:
        return self.logged or f"{self.stage}: {self.message}"


@dataclass(frozen=True, slots=True)
class TlsHello:
    """The first bytes are a whole TLS ClientHello (``hello`` parsed, ``raw`` as sent)."""

    hello: Any
    raw: bytes


@dataclass(frozen=True, slots=True)
class PlainHttp:
    """The first bytes start a plain HTTP/1 request."""

    data: bytes


@dataclass(frozen=True, slots=True)
class RawBytes:
    """The first bytes are neither TLS nor HTTP: relayed untouched."""

    data: bytes


Decision = Tunnel | Forward | Refusal | TlsHello | PlainHttp | RawBytes


@dataclass(frozen=True, slots=True)
class FrontStep:
    """One step of a front: ``reply`` to send now, then ``decision`` (None: more bytes)."""

    reply: bytes = b""
    decision: Decision | None = None


NEED_MORE = FrontStep()        # nothing to send, nothing decided yet (shared: it is frozen)


def refusal_of(exc: WireError, *, speaks_h1: bool) -> tuple[Refusal, bytes]:
    """The refusal for bad input, and the 400 to send when the client speaks HTTP/1 (else
    no bytes). ``exc.stage`` (default "parse") is what X-Mirror-Error and the record say."""
    layer = getattr(exc, "layer", "wire")
    message = str(exc) if str(exc).startswith(f"{layer}:") else f"{layer}: {exc}"
    stage = getattr(exc, "stage", "parse")
    refusal = Refusal(stage, message, logged=f"refused: {message}")
    return refusal, http1_error(400, stage, message) if speaks_h1 else b""


def loop_error(destination: Destination) -> WireError:
    """The error for a destination that is one of the proxy's own listeners."""
    error = WireError(f"{destination.host}:{destination.port} is this proxy's own listener "
                      f"(a loop)", layer="front")
    error.stage = "loop"           # type: ignore[attr-defined]  # X-Mirror-Error and the record
    return error
