"""Upstream handshakes driven by the event loop: one libcurl multi handle, no threads.

libcurl's socket interface tells us which sockets to watch and when to call it back; the loop
watches them (``add_reader`` / ``add_writer``) and a timer, and hands readiness back with
``curl_multi_socket_action``. A handshake that completes leaves its easy handle in the multi
(a CONNECT_ONLY connection lives in the multi's pool: removing the handle closes it), and the
relay then reads and writes through ``curl_easy_recv`` / ``curl_easy_send`` as before; closing
the ``UpstreamTls`` removes the handle.

Compared with a blocking ``curl_easy_perform`` per connection on a pool of threads, nothing
waits for the GIL between the steps of a handshake, any number of handshakes can be in
flight, and every libcurl call happens on one thread, as a multi handle requires.
"""

from __future__ import annotations

import asyncio
import logging

from mirror.upstream.connection import UpstreamError
from mirror.upstream.curl.handshake import MirroredHandshake
from mirror.upstream.curl.native import native

log = logging.getLogger("mirror.proxy")

CURLMOPT_SOCKETFUNCTION = 20001
CURLMOPT_SOCKETDATA = 10002
CURLMOPT_TIMERFUNCTION = 20004
CURLMOPT_TIMERDATA = 10005
CURL_SOCKET_TIMEOUT = -1
CURL_POLL_IN, CURL_POLL_OUT, CURL_POLL_REMOVE = 1, 2, 4
CURL_CSELECT_IN, CURL_CSELECT_OUT = 1, 2
CURLMSG_DONE = 1


class CurlLoop:
    """A libcurl multi handle on an asyncio loop. ``open(handshake)`` returns a future that
    becomes the ``UpstreamTls`` (or raises ``UpstreamError``). Use on the loop's thread only."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        nat = self._nat = native()
        self._lib, self._ffi = nat.lib, nat.ffi
        self._multi = self._lib.curl_multi_init()
        if self._multi == self._ffi.NULL:
            raise UpstreamError("curl_multi_init failed", "upstream-connect")
        self._socket_cb = self._ffi.callback("int(void *, int, int, void *, void *)",
                                             self._on_socket, onerror=self._callback_failed)
        self._timer_cb = self._ffi.callback("int(void *, long, void *)", self._on_timer,
                                            onerror=self._callback_failed)
        self._lib.curl_multi_setopt(self._multi, CURLMOPT_SOCKETFUNCTION,
                                    self._ffi.cast("multi_socket_fn", self._socket_cb))
        self._lib.curl_multi_setopt(self._multi, CURLMOPT_TIMERFUNCTION,
                                    self._ffi.cast("multi_timer_fn", self._timer_cb))
        self._running = self._ffi.new("int *")
        self._queued = self._ffi.new("int *")
        self._watched: dict[int, int] = {}          # fd -> CURL_POLL_IN / _OUT bits
        self._timer: asyncio.TimerHandle | None = None
        self._pending: dict[int, tuple[MirroredHandshake, asyncio.Future]] = {}
        self._in_multi: set[int] = set()            # handles added and not yet removed
        self._closed = False

    # --- handshakes -------------------------------------------------------------------------
    def open(self, handshake: MirroredHandshake) -> asyncio.Future:
        future = self.loop.create_future()
        key = self._key(handshake.handle)
        code = -1 if self._closed else self._lib.curl_multi_add_handle(self._multi,
                                                                       handshake.handle)
        if code != 0:                   # not in the multi: the handle can go at once
            handshake.abandon()
            reason = "the proxy is stopping" if self._closed else self._strerror(code)
            future.set_exception(UpstreamError(f"libcurl multi: {reason}", "upstream-connect"))
            return future
        self._in_multi.add(key)
        self._pending[key] = (handshake, future)
        return future                   # libcurl asks for a 0 ms timer: the start follows

    def _settle(self, key: int, code: int) -> None:
        handshake, future = self._pending.pop(key)
        try:
            if code != 0:
                raise handshake.failure(code)
            connection = handshake.connected(release=self._release)
        except UpstreamError as error:
            self._remove(handshake.handle)
            handshake.abandon()
            if not future.done():
                future.set_exception(error)
            return
        if future.done():               # nobody waits for it any more
            connection.close()
        else:
            future.set_result(connection)

    def _release(self, handle) -> None:
        """``UpstreamTls.close``: the handle leaves the multi (which closes the connection)."""
        self._remove(handle)

    def _remove(self, handle) -> None:
        key = self._key(handle)
        if key in self._in_multi:
            self._in_multi.discard(key)
            self._lib.curl_multi_remove_handle(self._multi, handle)

    # --- libcurl's callbacks (inside our calls into libcurl, on the loop's thread) ----------
    def _on_socket(self, _easy, fd: int, what: int, _userp, _socketp) -> int:
        old = self._watched.get(fd, 0)
        new = 0 if what == CURL_POLL_REMOVE else what & (CURL_POLL_IN | CURL_POLL_OUT)
        self._watch(fd, old, new)
        return 0

    def _watch(self, fd: int, old: int, new: int) -> None:
        if old & CURL_POLL_IN and not new & CURL_POLL_IN:
            self.loop.remove_reader(fd)
        if old & CURL_POLL_OUT and not new & CURL_POLL_OUT:
            self.loop.remove_writer(fd)
        if new & CURL_POLL_IN and not old & CURL_POLL_IN:
            self.loop.add_reader(fd, self._action, fd, CURL_CSELECT_IN)
        if new & CURL_POLL_OUT and not old & CURL_POLL_OUT:
            self.loop.add_writer(fd, self._action, fd, CURL_CSELECT_OUT)
        if new:
            self._watched[fd] = new
        else:
            self._watched.pop(fd, None)

    def _on_timer(self, _multi, timeout_ms: int, _userp) -> int:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if timeout_ms >= 0:
            self._timer = self.loop.call_later(timeout_ms / 1000, self._on_timeout)
        return 0

    @staticmethod
    def _callback_failed(exc_type, exc, _tb) -> int:
        log.error("libcurl multi callback failed: %s: %s", exc_type.__name__, exc)
        return -1

    # --- driving ------------------------------------------------------------------------------
    def _on_timeout(self) -> None:
        self._timer = None
        self._action(CURL_SOCKET_TIMEOUT, 0)

    def _action(self, fd: int, events: int) -> None:
        if self._closed:
            return
        self._lib.curl_multi_socket_action(self._multi, fd, events, self._running)
        while True:
            message = self._lib.curl_multi_info_read(self._multi, self._queued)
            if message == self._ffi.NULL:
                break
            if message.msg == CURLMSG_DONE:
                key = self._key(message.easy_handle)
                code = message.data.result
                if key in self._pending:
                    self._forget_socket(self._pending[key][0].handle)
                    self._settle(key, code)

    def _forget_socket(self, handle) -> None:
        """A finished handshake's socket is the relay's to watch from now on."""
        fd = self._nat.active_socket(handle)
        if fd >= 0 and fd in self._watched:
            self._watch(fd, self._watched[fd], 0)

    def _key(self, handle) -> int:
        return int(self._ffi.cast("uintptr_t", handle))

    def _strerror(self, code: int) -> str:
        return self._ffi.string(self._lib.curl_multi_strerror(code)).decode("ascii", "replace")

    def close(self) -> None:
        """Abandon handshakes in flight and free the multi handle (connections already handed
        out must have been closed)."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for fd, bits in list(self._watched.items()):
            self._watch(fd, bits, 0)
        for handshake, future in list(self._pending.values()):
            self._remove(handshake.handle)
            handshake.abandon()
            if not future.done():
                future.set_exception(UpstreamError("the proxy is stopping", "upstream-connect"))
        self._pending.clear()
        if not self._in_multi:
            self._lib.curl_multi_cleanup(self._multi)
        # else: connections still open hold the multi; the process is ending anyway
