"""Server-side TLS over memory BIOs, so the ClientHello bytes we already read can be replayed.

The connection handler reads the client's first flight itself (to parse and keep the raw
ClientHello), then hands those same bytes to an ``ssl.SSLObject``. No MSG_PEEK polling, and the
socket stays owned by one asyncio Protocol.
"""

from __future__ import annotations

import asyncio
import ssl
from concurrent.futures import Executor

# What one SSLObject.read asks for: a TLS record carries 16 KiB of plaintext at most and OpenSSL
# returns one record per read, so a larger request only makes a larger buffer to shrink.
READ_SIZE = 65536


class ServerTls:
    """Feed ciphertext in, get plaintext out; write plaintext, collect ciphertext to send."""

    __slots__ = ("_incoming", "_outgoing", "closed", "handshake_done", "obj", "record_sizes")

    def __init__(self, context: ssl.SSLContext) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self.handshake_done = False
        self.closed = False
        self.record_sizes: list[int] = []   # plaintext length of each record the last
                                            # ``receive`` read (OpenSSL reads one per call)

    def receive(self, ciphertext: bytes) -> bytes:
        """Process bytes from the client; returns the application data they carried (the
        length of each record it came in: ``record_sizes``).

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
        # Read while there are bytes to read: records still in the incoming BIO, or plaintext
        # OpenSSL has decrypted and not handed out. A read past them would only raise
        # SSLWantReadError, an exception per received chunk (a partial record still does).
        while self._incoming.pending or self.obj.pending():
            try:
                chunk = self.obj.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.closed = True
                break
            if not chunk:
                break
            chunks.append(chunk)
        self.record_sizes = [len(chunk) for chunk in chunks]
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def send(self, plaintext: bytes | memoryview) -> None:
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


def answer_hello(loop: asyncio.AbstractEventLoop, executor: Executor, tls: ServerTls,
                 hello: bytes) -> asyncio.Future:
    """``tls.receive(hello)`` on a thread of ``executor``: the server's first flight, its key
    exchange and signature, is the most CPU a new connection costs this side, and OpenSSL
    makes it without the interpreter lock, so the event loop goes on meanwhile. The future's
    result is what ``receive`` returns (its exception: the ``ssl.SSLError``). Nothing else may
    touch ``tls`` before the future is done. An executor that is shut down (the proxy is
    stopping) answers on the caller's thread instead."""
    try:
        return loop.run_in_executor(executor, tls.receive, hello)
    except RuntimeError:                      # cannot schedule new futures after shutdown
        answered = loop.create_future()
        try:
            answered.set_result(tls.receive(hello))
        except ssl.SSLError as exc:
            answered.set_exception(exc)
        return answered
