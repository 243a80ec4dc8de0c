"""The one error type the replay TLS engine raises.

``ReplayError`` carries a short machine ``reason`` (a stable token such as ``"certificate"``,
``"bad-finished"``, ``"needs-boringssl"``) and a human ``message``. ``str(error)`` is
``"<reason>: <message>"``, one line fit for a log or a 502 body. ``alert`` is the TLS alert
description the engine sends the server before giving up (``None`` when it sends none).

Reasons: see :data:`REASONS`; a caller may branch on ``needs-boringssl`` (the server chose a
suite or key exchange this engine leaves to BoringSSL) and treat every other reason as a refusal.
"""

from __future__ import annotations

REASONS = {
    "hello": "the client's ClientHello cannot be replayed",
    "decode": "a server message does not parse",
    "unexpected-message": "a server message arrived out of order",
    "version": "the server chose a TLS version the client did not offer or this engine lacks",
    "cipher-not-offered": "the server chose a cipher suite the client did not offer",
    "group-not-offered": "the server chose a key exchange group the client did not offer",
    "second-hrr": "the server sent a second HelloRetryRequest",
    "unsolicited-extension": "the server sent an extension the client did not offer",
    "alpn": "the server chose an ALPN protocol the client did not offer",
    "downgrade": "the server's random carries a TLS 1.3 downgrade sentinel",
    "certificate": "the server's certificate chain does not verify for the name",
    "policy": "the caller's chain or choice policy refused the server",
    "bad-signature": "the server's CertificateVerify or ServerKeyExchange signature is wrong",
    "bad-finished": "the server's Finished does not match the transcript",
    "bad-record-mac": "a record does not decrypt",
    "record-overflow": "a record exceeds the negotiated or protocol limit",
    "truncated": "the connection ended in the middle of a record or the handshake",
    "alert": "the server sent a fatal alert",
    "keyupdate-flood": "the server sent too many KeyUpdates",
    "renegotiation": "renegotiation_info is wrong or the server tried to resume",
    "needs-boringssl": "the server chose a suite or key exchange this engine leaves to BoringSSL",
    "unsupported": "the server chose something this engine cannot complete",
    "closed": "the connection is closed",
}


class ReplayError(Exception):
    """The replay engine refused the server (or cannot go on). See the module docstring."""

    def __init__(self, reason: str, message: str, *, alert: int | None = None) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.alert = alert
