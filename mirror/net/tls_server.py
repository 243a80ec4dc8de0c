"""Server-side TLS over memory BIOs, so the ClientHello bytes we already read can be replayed.

The connection handler reads the client's first flight itself (to parse and keep the raw
ClientHello), then hands those same bytes to an ``ssl.SSLObject``. No MSG_PEEK polling, and the
socket stays owned by one asyncio Protocol.
"""

from __future__ import annotations

import ssl


class ServerTls:
    """Feed ciphertext in, get plaintext out; write plaintext, collect ciphertext to send."""

    __slots__ = ("obj", "_incoming", "_outgoing", "handshake_done", "closed")

    def __init__(self, context: ssl.SSLContext) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self.handshake_done = False
        self.closed = False

    def receive(self, ciphertext: bytes) -> bytes:
        """Process bytes from the client; returns the application data they carried.

        Raises ``ssl.SSLError`` on a failed handshake or a bad record.
        """
        if ciphertext:
            self._incoming.write(ciphertext)
        if not self.handshake_done:
            try:
                self.obj.do_handshake()
            except ssl.SSLWantReadError:
                return b""
            self.handshake_done = True
        chunks = []
        while True:
            try:
                chunk = self.obj.read(262144)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.closed = True
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def send(self, plaintext: bytes) -> None:
        if plaintext:
            self.obj.write(plaintext)

    def close(self) -> None:
        try:
            self.obj.unwrap()
        except (ssl.SSLError, ssl.SSLWantReadError):
            pass

    def outgoing(self) -> bytes:
        """Ciphertext waiting to be written to the socket."""
        return self._outgoing.read()

    @property
    def alpn(self) -> str | None:
        return self.obj.selected_alpn_protocol()

    @property
    def version(self) -> str | None:
        return self.obj.version()
