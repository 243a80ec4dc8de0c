"""A replay-engine upstream connection once its handshake is done (an ``UpstreamConnection``).

The socket is non-blocking and this object's alone; the event loop only watches ``fd``.
``recv_into`` reads what the socket has and has the ``ReplayClient`` decrypt its records straight
into the caller's buffer (what does not fit waits here for the next call), answering what the
server asks for on the way: KeyUpdate, post-handshake authentication. ``send`` seals the
plaintext into records — of the client's own plaintext lengths when ``record_sizes`` gives
them — into one buffer shared by every connection and writes what the socket takes; the rest
is copied into this object (``holds_output``) until ``flush`` writes it, and ``send`` accepts
nothing more meanwhile. A read that empties the socket makes the next ``recv_into`` answer None
without reading: the event loop reports the socket readable again while bytes wait.
"""

from __future__ import annotations

import socket

from mirror.replay.client import ApplicationData, Closed, ReplayClient
from mirror.replay.errors import ReplayError
from mirror.upstream.connection import UpstreamError

READ_SIZE = 65536
# A read of the relay's buffer's room in ciphertext decrypts to less than that room, so every
# record it completes fits (a record straddling two reads aside); 256 KiB is the relay's buffer.
MAX_READ, MIN_READ = 262144, 16384 + 256 + 5
# Where ``send`` seals the records it writes at once, for every connection: the event loop runs
# one send at a time and what the socket does not take is copied out, so a buffer per connection
# (or per write, allocated and zeroed each time) would only cost memory and time.
_SEALED = bytearray()


class ReplayConnection:
    __slots__ = ("_client", "_drained", "_ended", "_out", "_plain", "alpn", "closed", "engine",
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
        self._drained = False                # the last read emptied the socket
        self.closed = False
        self.engine = "replay"
        self.engine_reason = reason

    def hold(self, data: bytes) -> None:
        """Handshake bytes the socket has not taken yet: written before anything else."""
        self._out += data

    def recv_into(self, buffer) -> int | None:
        """Plaintext into ``buffer``: its length, 0 at the end, None when nothing is there now.
        After a read that emptied the socket the next call answers None without asking it (the
        caller waits for readability then, which the event loop reports again while bytes
        wait), so draining the socket costs no failing read."""
        count = 0
        if self._drained:
            self._drained = False
        elif not self._plain and not self._ended:
            count = self._pull(buffer)
        if not count and self._plain:
            count = min(len(buffer), len(self._plain))
            buffer[:count] = memoryview(self._plain)[:count]
            del self._plain[:count]
        if count:
            return count
        return 0 if self._ended else None

    def _pull(self, buffer) -> int:
        """Read once from the socket; the plaintext written at the start of ``buffer``."""
        size = min(MAX_READ, max(MIN_READ, len(buffer)))
        try:
            data = self.sock.recv(size)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as error:
            raise UpstreamError(f"upstream read failed: {error.strerror or error}", "relay") from None
        self._drained = 0 < len(data) < size
        count = 0
        try:
            if data:
                count, events = self._client.receive_into(data, memoryview(buffer))
            else:
                events = self._client.eof()
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
        return count

    def send(self, data, record_sizes: list[int] | None = None) -> int:
        if self._out and not self.flush():
            return 0
        try:
            sealed = self._client.send_into(_SEALED, data, record_sizes)
        except ReplayError as error:
            raise UpstreamError(f"replay engine: {error}", "relay") from None
        with sealed:                              # nothing waits: written from the shared buffer
            sent, size = 0, len(sealed)
            try:
                while sent < size:
                    sent += self.sock.send(sealed[sent:] if sent else sealed)
            except (BlockingIOError, InterruptedError):
                self._out += sealed[sent:]        # only what the socket did not take is kept
            except OSError as error:
                raise UpstreamError(f"upstream write failed: {error.strerror or error}",
                                    "relay") from None
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
