"""Which TLS engine makes an upstream connection: ``--tls-engine auto|replay|boringssl``.

``replay`` sends the client's own ClientHello (``mirror.replay``); ``boringssl`` has
curl-impersonate's BoringSSL build one from the client's (``mirror.upstream.curl``). ``auto``
uses BoringSSL where the relay plan says its hello is the client's, field for field (it is
Chromium's own stack, so what follows the hello is the browser's too), and replay for every
other hello. A server that chose something only BoringSSL completes (CBC suites, RSA key
exchange, DHE) is remembered, per host and port, so its later connections go to BoringSSL
straight away; the memory is bounded and per process.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

ENGINES = ("auto", "replay", "boringssl")
REPLAY, BORINGSSL = "replay", "boringssl"
MAX_REMEMBERED = 4096


@dataclass(slots=True, frozen=True)
class EngineChoice:
    """The engine to use and why (the capture record's ``upstream.engine_reason``)."""

    engine: str
    reason: str


def plan_is_exact(plan) -> bool:
    """True when the plan predicts BoringSSL sends this hello as the client did, after masking
    what the client makes fresh per connection (``RelayPlan.hello_exact``, checked against
    what BoringSSL really sends by tests/test_boringssl_hello_measured.py)."""
    return bool(plan.hello_exact)


class EngineChooser:
    """``choose(plan, host, port)`` per connection; ``remember(host, port, why)`` when a
    server needs BoringSSL. Use on one thread (the event loop's)."""

    def __init__(self, mode: str = "auto", size: int = MAX_REMEMBERED) -> None:
        if mode not in ENGINES:
            raise ValueError(f"unknown TLS engine {mode!r} (one of {', '.join(ENGINES)})")
        self.mode = mode
        self.size = size
        self._needs_boringssl: OrderedDict[tuple[str, int], str] = OrderedDict()

    def choose(self, plan, host: str, port: int) -> EngineChoice:
        if self.mode == BORINGSSL:
            return EngineChoice(BORINGSSL, "--tls-engine boringssl")
        why = self._needs_boringssl.get((host.lower(), port))
        if why is not None:
            self._needs_boringssl.move_to_end((host.lower(), port))
            return EngineChoice(BORINGSSL, f"this server needs BoringSSL: {why}")
        if self.mode == REPLAY:
            return EngineChoice(REPLAY, "--tls-engine replay")
        if plan_is_exact(plan):
            return EngineChoice(BORINGSSL, "BoringSSL sends this hello exactly")
        inexact = sorted(name for name, verdict in plan.fidelity.items()
                         if verdict.status != "exact")
        return EngineChoice(REPLAY, "BoringSSL would change " + (", ".join(inexact) or "the hello"))

    def remember(self, host: str, port: int, why: str) -> None:
        key = (host.lower(), port)
        self._needs_boringssl[key] = why
        self._needs_boringssl.move_to_end(key)
        while len(self._needs_boringssl) > self.size:
            self._needs_boringssl.popitem(last=False)


def engine_failed(error, engine: str, reason: str):
    """``error`` (an ``UpstreamError``) marked with the engine that failed, for the record."""
    error.engine, error.engine_reason = engine, reason
    return error


def engine_record(up, error) -> dict:
    """The capture record's ``upstream.engine`` and ``upstream.engine_reason``."""
    source = up if up is not None else error
    return {"engine": getattr(source, "engine", None),
            "engine_reason": getattr(source, "engine_reason", None)}
