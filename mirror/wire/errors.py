"""The one error type the wire parsers raise.

``WireError`` means "these bytes are not a valid instance of what was expected": a length that
lies, a field out of range, a forbidden construct (obs-fold in HTTP/1, say), an input larger
than the configured limit. A caller that catches it closes that one connection and logs
``str(error)``; it never means "need more bytes" (parsers return ``None`` for that).
"""


class WireError(ValueError):
    """Invalid or unacceptable input on the wire.

    ``layer`` names the protocol ("tls", "http1", "http2", "tcp", "socks5", "quic", ...) so a
    log line says which parser refused the bytes.
    """

    def __init__(self, message: str, *, layer: str = "wire") -> None:
        super().__init__(f"{layer}: {message}")
        self.layer = layer
        self.reason = message
