"""One connection's ``--upstream-response-timeout``: when to look, and what to do when a
request is overdue (the rule itself is ``response_timeout``, with the clock passed in).

HTTP/1 (plain or inside TLS): one wait per connection, answered by any server byte; overdue,
the client gets a 504 and both sides close. HTTP/2: per stream; overdue streams get a 504
HEADERS frame put between the server's frames and are reset upstream (CANCEL) between the
client's. A passthrough tunnel: the server must answer the ClientHello in time, else both
sides close. A request the server has not taken whole yet (a slow reader) waits anew.
"""

from __future__ import annotations

import logging

from mirror.proxy.capture_record import record_error, timeout_response
from mirror.proxy.error_reply import (
    goaway,
    h2_error_headers,
    h2_settings_empty,
    http1_error,
    rst_stream,
)
from mirror.proxy.observe import Http1Observer, Http2Observer
from mirror.proxy.response_timeout import STAGE as RESPONSE_TIMEOUT
from mirror.proxy.response_timeout import (
    ResponseDeadlines,
    ResponseTimer,
    StreamWaits,
    unsent_bytes,
)
from mirror.proxy.stage import RAW, Stage

log = logging.getLogger("mirror.proxy")


class ResponseWatch:
    """The deadlines, the timer and the HTTP/2 streams to cancel of one connection ``conn``."""

    def __init__(self, conn, timeout: float) -> None:
        self.conn = conn
        self.waits = ResponseDeadlines(timeout, conn.loop.time)
        self.timer = ResponseTimer(conn.loop, self.waits, self._overdue)
        self.h2_cancel: list[int] = []    # streams to reset upstream once the client is
        if isinstance(conn.observer, Http2Observer):
            conn.observer.waits = StreamWaits(self.waits)

    @classmethod
    def start(cls, conn) -> ResponseWatch | None:
        """A watch for ``conn`` (None with the timeout off)."""
        timeout = conn.proxy.config.upstream_response_timeout
        return cls(conn, timeout) if timeout > 0 else None

    def cancel(self) -> None:
        self.timer.cancel()

    # --- after bytes moved -------------------------------------------------------------------
    def plain(self, server: bool = False) -> None:
        """After bytes on a plain relay (``server``: from the server)."""
        conn = self.conn
        if conn.stage is RAW:          # passthrough TLS: only until the server's first byte
            if server:
                conn.watch = None
                self.timer.cancel()
            elif conn.plain.upstream.ready:
                self.waits.waiting("raw")
                self.timer.update()
            return
        self._h1(server, conn.plain.upstream.ready)

    def tls(self, server: bool = False) -> None:
        """After bytes on the TLS relay."""
        observer = self.conn.observer
        if isinstance(observer, Http1Observer):
            self._h1(server, True)
            return
        if observer.waits.owed:
            self._answer_late_streams()
        if self.h2_cancel:
            self._cancel_upstream_streams()
        self.timer.update()

    def _h1(self, server: bool, sent: bool) -> None:
        if server:
            self.waits.answered("h1")          # any server byte ends a wait
        if sent and self.conn.observer.awaiting_response():
            self.waits.waiting("h1")
        else:
            self.waits.answered("h1")
        self.timer.update()

    # --- overdue -----------------------------------------------------------------------------
    def _overdue(self, keys: list) -> None:
        conn = self.conn
        timeout = self.waits.timeout
        if conn.stage != Stage.RAW and self._request_unsent():
            # the server has not taken the whole request yet (a slow reader of a large
            # body): the wait starts over from now
            for key in keys:
                self.waits.waiting(key)
            return
        if conn.stage == Stage.RAW:
            self._give_up(f"the server sent nothing within {timeout:g}s of the client's "
                          f"ClientHello (a passthrough tunnel: closed, no HTTP answer possible)")
            conn.close_both()
            return
        message = f"the server sent no response head within {timeout:g}s of the request"
        if conn.stage == Stage.PLAIN:
            conn.observer.mark_response(timeout_response())
            conn.plain.failed(RESPONSE_TIMEOUT, message, timeout=True)
            conn.plain.upstream.close()
        elif conn.stage == Stage.TLS and isinstance(conn.observer, Http1Observer):
            conn.observer.mark_response(timeout_response())
            self._give_up(message)
            conn.send_to_client(http1_error(504, RESPONSE_TIMEOUT, message))
            conn.close_client()
            conn.tls_relay.pipe.close()
        elif conn.stage == Stage.TLS:
            conn.observer.waits.owe(keys)
            self._answer_late_streams()
            if self.h2_cancel:
                self._cancel_upstream_streams()

    def _give_up(self, message: str) -> None:
        conn = self.conn
        record_error(conn.record, RESPONSE_TIMEOUT, message, upstream=True)
        log.warning("%s:%s -> %s:%s: %s: %s", *conn.peer, conn.dst.host, conn.dst.port,
                    RESPONSE_TIMEOUT, message)

    def _request_unsent(self) -> bool:
        """Bytes towards the server still in our buffer or unacknowledged in the kernel's."""
        conn = self.conn
        if conn.plain is not None:
            upstream = conn.plain.upstream
            sock = upstream.transport.get_extra_info("socket") if upstream.transport else None
            return bool(upstream.buffered() or (sock is not None
                                                and unsent_bytes(sock.fileno())))
        pipe = conn.tls_relay.pipe if conn.tls_relay is not None else None
        if pipe is not None:
            return bool(pipe.buffered or unsent_bytes(pipe.up.fd))
        return False

    def _answer_late_streams(self) -> None:
        """A 504 HEADERS frame on each overdue HTTP/2 stream, put between the server's frames
        (a server that has not even sent its SETTINGS gets the connection closed)."""
        conn = self.conn
        observer = conn.observer
        state = observer.server_state()
        if state == "mid-frame":
            return                       # after the frame under way (the next server bytes)
        streams = observer.waits.take_owed()
        if state == "lost" or not streams:   # "lost": the server's frames are not followed
            return
        message = f"the server sent no response head within {self.waits.timeout:g}s"
        conn.record["error"] = conn.record["error"] or {
            "stage": RESPONSE_TIMEOUT, "message": f"stream {streams[0]}: {message}"}
        log.warning("%s:%s -> %s:%s: %s: HTTP/2 stream(s) %s: %s", *conn.peer, conn.dst.host,
                    conn.dst.port, RESPONSE_TIMEOUT, streams, message)
        frames = [h2_settings_empty()] if state == "silent" else []
        for stream in streams:
            frames.append(h2_error_headers(stream, 504, RESPONSE_TIMEOUT, message))
            observer.mark_response(stream, dict(timeout_response(), stream_id=stream))
        self.h2_cancel += streams
        if state == "silent":
            frames.append(goaway(observer.highest_stream, 0, "the server sent nothing"))
            conn.send_to_client(b"".join(frames))
            conn.close_client()
            conn.tls_relay.pipe.close()
            return
        conn.send_to_client(b"".join(frames))

    def _cancel_upstream_streams(self) -> None:
        """RST_STREAM (CANCEL) upstream for streams answered with a 504, between the client's
        frames, so the server does not answer them late."""
        pipe = self.conn.tls_relay.pipe if self.conn.tls_relay is not None else None
        if pipe is not None and self.conn.observer.reader.at_frame_boundary:
            pipe.write(b"".join(rst_stream(stream) for stream in self.h2_cancel))
            self.h2_cancel = []
