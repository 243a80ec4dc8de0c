"""The upstream response timeout (``--upstream-response-timeout``): which requests were fully
sent to the server and still have no response head when the timeout has passed.

Bookkeeping only, with the clock passed in (``clock()`` returns seconds, the event loop's
``loop.time`` in the proxy), so the rule is tested without sleeping; ``ResponseTimer`` is the
one event-loop timer a connection arms at ``next_deadline()``. A timeout of 0 turns it off.

What counts as waiting, per relay:

- HTTP/1 (plain or inside the mirrored TLS): the connection waits while its oldest unanswered
  request has been sent whole (head and framed body) and no byte of a response is under way.
  The wait starts then; any byte from the server ends it (a new one may start at once, e.g.
  after an interim 1xx or when a response ends with another request already sent). A response
  whose head has arrived is never timed, however slowly its body comes (a long-poll).
- HTTP/2: per stream, from the client's END_STREAM (on its request HEADERS, DATA or trailers)
  to the server's first HEADERS on that stream; a reset from either side ends it. A stream the
  server answered before the request ended is not timed.
- A request is sent whole once the server's host has acknowledged its last byte: when the
  timeout is reached while the proxy's buffer or the kernel's send queue towards the server
  still holds bytes (``unsent_bytes``: a server slowly reading a large body), the wait starts
  over.
- Raw relay (a passthrough TLS tunnel): from the moment the client's bytes are written to the
  server until the server's first byte. The first bytes are a whole ClientHello, which the
  server must answer; after the first server byte the bytes are opaque and nothing is timed.
"""

from __future__ import annotations

import fcntl
import struct
import termios
from collections.abc import Callable, Hashable

from mirror.wire.http2 import Data, Headers, RstStream

STAGE = "upstream-response-timeout"
MAX_WAITING = 10_000      # streams timed at once per connection; more are left to --idle-timeout


def unsent_bytes(fd: int) -> int:
    """Bytes written to socket ``fd`` that its peer has not acknowledged yet (Linux
    SIOCOUTQ); 0 if that cannot be told."""
    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except OSError:
        return 0


class ResponseDeadlines:
    """Keys (a stream id, "h1", "raw") waiting for a response since a time of ``clock``."""

    def __init__(self, timeout: float, clock: Callable[[], float]) -> None:
        self.timeout = timeout
        self.clock = clock
        self._since: dict[Hashable, float] = {}   # insertion order is time order
        self.started = False      # a wait started since the timer last looked

    def waiting(self, key: Hashable) -> None:
        """``key`` waits from now on (a key already waiting keeps its start)."""
        if self.timeout > 0 and key not in self._since and len(self._since) < MAX_WAITING:
            self._since[key] = self.clock()
            self.started = True

    def answered(self, key: Hashable) -> None:
        """``key`` no longer waits (its response started, it was reset, or it was given up)."""
        self._since.pop(key, None)

    def is_waiting(self, key: Hashable) -> bool:
        return key in self._since

    def overdue(self) -> list:
        """The keys whose wait has reached the timeout by now; they no longer wait."""
        if not self._since:
            return []
        limit = self.clock() - self.timeout
        keys = []
        for key, since in self._since.items():
            if since > limit:
                break
            keys.append(key)
        for key in keys:
            del self._since[key]
        return keys

    def next_deadline(self) -> float | None:
        """When the earliest wait reaches the timeout (None: nothing waits)."""
        for since in self._since.values():
            return since + self.timeout
        return None


class StreamWaits:
    """HTTP/2: the client's and the server's frame events in, per-stream waits out."""

    def __init__(self, deadlines: ResponseDeadlines) -> None:
        self.deadlines = deadlines
        self._sending: set[int] = set()   # requests still being sent, not answered yet
        self.owed: dict[int, None] = {}   # overdue streams the proxy has not answered yet

    def owe(self, streams: list[int]) -> None:
        """These overdue streams are to be answered by the proxy (when it can put a frame in)."""
        self.owed.update(dict.fromkeys(streams))

    def take_owed(self) -> list[int]:
        """The streams still owed an answer (none answered by the server or reset meanwhile)."""
        streams = list(self.owed)
        self.owed.clear()
        return streams

    def client_event(self, event) -> None:
        if isinstance(event, Headers):
            stream = event.stream_id
            is_request = bool(event.headers) and event.headers[0][0].startswith(":")
            if event.end_stream:
                if is_request or stream in self._sending:
                    self._sending.discard(stream)
                    self.deadlines.waiting(stream)
            elif is_request and len(self._sending) < MAX_WAITING:
                self._sending.add(stream)
        elif isinstance(event, Data):
            if event.end_stream and event.stream_id in self._sending:
                self._sending.discard(event.stream_id)
                self.deadlines.waiting(event.stream_id)
        elif isinstance(event, RstStream):
            self._sending.discard(event.stream_id)
            self.deadlines.answered(event.stream_id)
            self.owed.pop(event.stream_id, None)

    def server_event(self, event) -> None:
        if isinstance(event, (Headers, RstStream)):
            self._sending.discard(event.stream_id)
            self.deadlines.answered(event.stream_id)
            self.owed.pop(event.stream_id, None)


class ResponseTimer:
    """One ``loop.call_at`` timer for a connection's deadlines: ``update()`` after anything that
    may have started a wait; ``fire(keys)`` gets the overdue keys."""

    def __init__(self, loop, deadlines: ResponseDeadlines, fire: Callable[[list], None]) -> None:
        self.loop = loop
        self.deadlines = deadlines
        self.fire = fire
        self._handle = None

    def update(self) -> None:
        if self.deadlines.started:
            self.deadlines.started = False
            self._arm()

    def _arm(self) -> None:
        deadline = self.deadlines.next_deadline()
        if deadline is None:
            return                 # a timer already armed finds nothing and stops
        if self._handle is not None:
            if self._handle.when() <= deadline:
                return
            self._handle.cancel()
        self._handle = self.loop.call_at(deadline, self._fired)

    def _fired(self) -> None:
        self._handle = None
        keys = self.deadlines.overdue()
        if keys:
            self.fire(keys)
        self.deadlines.started = False
        self._arm()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.fire = lambda keys: None
