"""A replay-engine upstream connection once its handshake is done (an ``UpstreamConnection``).

The socket is non-blocking and this object's alone; the event loop only watches ``fd``.
``recv_into`` reads what the socket has, feeds the ``ReplayClient`` and hands out the plaintext
it yields (answering what the server asks for on the way: KeyUpdate, post-handshake
authentication). ``send`` seals the plaintext into records — of the client's own plaintext
lengths when ``record_sizes`` gives them — and writes what the socket takes; the rest waits in
this object (``holds_output``) until ``flush`` writes it, and ``send`` accepts nothing more
meanwhile.
"""

from __future__ import annotations

import socket

from mirror.replay.client import ApplicationData, Closed, ReplayClient
from mirror.replay.errors import ReplayError
from mirror.upstream.connection import UpstreamError

READ_SIZE = 65536


class ReplayConnection:
    __slots__ = ("_client", "_ended", "_out", "_plain", "alpn", "closed", "engine",
                 "engine_reason", "fd", "sock")

    holds_output = True

    @property
    def sent_hello(self) -> bytes | None:
        """The (first) ClientHello this engine wrote: the record compares it with the
        client's, field by field, as it does the hello BoringSSL wrote."""
        sent = self._client.hellos_sent
        return sent[0] if sent else None

    def __init__(self, sock: socket.socket, client: ReplayClient, alpn: str | None,
                 plaintext: bytes = b"", reason: str = "") -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self._client = client
        self.alpn = alpn
        self._plain = bytearray(plaintext)   # read from the server, not handed out yet
        self._out = bytearray()              # sealed for the server, not written yet
        self._ended = False
        self.closed = False
        self.engine = "replay"
        self.engine_reason = reason

    def recv_into(self, buffer) -> int | None:
        if not self._plain and not self._ended:
            self._pull()
        if self._plain:
            count = min(len(buffer), len(self._plain))
            buffer[:count] = self._plain[:count]
            del self._plain[:count]
            return count
        return 0 if self._ended else None

    def _pull(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            raise UpstreamError(f"upstream read failed: {error.strerror or error}", "relay") from None
        try:
            events = self._client.receive(data) if data else self._client.eof()
        except ReplayError as error:
            self._out += self._client.data_to_send()      # the alert, if one is due
            self._try_flush()
            raise UpstreamError(f"replay engine: {error}", "relay") from None
        for event in events:
            if isinstance(event, ApplicationData):
                self._plain += event.data
            elif isinstance(event, Closed):
                self._ended = True
        if not data:
            self._ended = True
        answer = self._client.data_to_send()
        if answer:
            self._out += answer
            self.flush()

    def send(self, data, record_sizes: list[int] | None = None) -> int:
        if self._out and not self.flush():
            return 0
        try:
            self._out += self._client.send(bytes(data), record_sizes)
        except ReplayError as error:
            raise UpstreamError(f"replay engine: {error}", "relay") from None
        self.flush()
        return len(data)

    def flush(self) -> bool:
        while self._out:
            try:
                sent = self.sock.send(self._out)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as error:
                raise UpstreamError(f"upstream write failed: {error.strerror or error}",
                                    "relay") from None
            del self._out[:sent]
        return True

    def _try_flush(self) -> None:
        try:
            self.flush()
        except UpstreamError:
            pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._out += self._client.close()     # close_notify, if the socket takes it
        except ReplayError:
            pass
        self._try_flush()
        self.sock.close()
