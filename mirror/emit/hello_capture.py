"""The ClientHello libcurl's BoringSSL actually writes on one upstream handle, kept for the record.

libcurl reports every TLS message it writes to a debug callback (``CURLOPT_DEBUGFUNCTION``,
type ``CURLINFO_SSL_DATA_OUT``; only with ``CURLOPT_VERBOSE``): the record header and the
handshake message come as separate calls. ``HelloCapture.start(handle)`` installs the callback
on a handle, which keeps the first ClientHello message (``01 len body``, bounded) and ignores
everything else; ``stop()`` (after the handshake) takes the callback and verbose mode off
again, so the relayed records that follow cost nothing; ``hello`` is what was captured.
With an ``https://`` upstream proxy the first hello is mirror's own to the proxy: ``skip=1``
keeps the next one.

Own cffi declarations over curl_cffi's library (the handle is any ``void *`` cdata or address).
"""

from __future__ import annotations

import threading

import cffi

CURLOPT_VERBOSE = 41
CURLOPT_DEBUGFUNCTION = 20094
CURLOPT_DEBUGDATA = 10095
CURLINFO_SSL_DATA_OUT = 6
HANDSHAKE_CLIENT_HELLO = 1
MIN_HELLO = 4 + 38                 # handshake header, then the shortest ClientHello body
MAX_HELLO = 1 << 16

_CDEF = """
int curl_easy_setopt(void *handle, int option, ...);
typedef int (*debug_fn)(void *handle, int type, char *data, size_t size, void *userp);
"""


class _Library:
    """curl_easy_setopt and the one debug callback every capture shares (loaded once)."""

    def __init__(self) -> None:
        import curl_cffi._wrapper as wrapper

        self.ffi = cffi.FFI()
        self.ffi.cdef(_CDEF)
        self.lib = self.ffi.dlopen(wrapper.__file__)
        self.active: dict[int, HelloCapture] = {}
        self._next = 1
        self.lock = threading.Lock()
        self.callback = self.ffi.callback("int(void *, int, char *, size_t, void *)",
                                          self._on_debug, onerror=self._error)

    def register(self, capture: HelloCapture) -> int:
        with self.lock:
            token = self._next
            self._next += 1
            self.active[token] = capture
        return token

    def _on_debug(self, _handle, kind: int, data, size: int, userp) -> int:
        if kind != CURLINFO_SSL_DATA_OUT or not MIN_HELLO <= size <= MAX_HELLO:
            return 0
        capture = self.active.get(int(self.ffi.cast("uintptr_t", userp)))
        if capture is None or capture.hello is not None or data[0] != b"\x01":
            return 0
        if capture.skip:
            capture.skip -= 1
            return 0
        capture.hello = bytes(self.ffi.buffer(data, size))
        return 0

    @staticmethod
    def _error(_exc_type, _exc, _tb) -> int:
        return 0          # a capture that failed leaves the handshake alone


_library: _Library | None = None
_library_lock = threading.Lock()


def _lib() -> _Library:
    global _library
    if _library is None:
        with _library_lock:
            if _library is None:
                _library = _Library()
    return _library


class HelloCapture:
    """The first ClientHello written on one handle (``hello``: bytes, or None)."""

    __slots__ = ("_handle", "_token", "hello", "skip")

    def __init__(self, skip: int = 0) -> None:
        self.hello: bytes | None = None
        self.skip = skip
        self._handle = None
        self._token = 0

    @classmethod
    def start(cls, handle, skip: int = 0) -> HelloCapture:
        """Capture on ``handle`` (a CURL* as a cffi pointer, or its address)."""
        library = _lib()
        capture = cls(skip)
        ffi = library.ffi
        address = handle if isinstance(handle, int) else int(ffi.cast("uintptr_t", handle))
        capture._handle = ffi.cast("void *", address)
        capture._token = library.register(capture)
        library.lib.curl_easy_setopt(capture._handle, CURLOPT_DEBUGFUNCTION,
                                     ffi.cast("debug_fn", library.callback))
        library.lib.curl_easy_setopt(capture._handle, CURLOPT_DEBUGDATA,
                                     ffi.cast("void *", capture._token))
        library.lib.curl_easy_setopt(capture._handle, CURLOPT_VERBOSE, ffi.cast("long", 1))
        return capture

    def stop(self) -> bytes | None:
        """Take the callback off the handle (it stays usable); the hello captured."""
        library = _lib()
        if self._handle is not None:
            ffi = library.ffi
            library.lib.curl_easy_setopt(self._handle, CURLOPT_VERBOSE, ffi.cast("long", 0))
            library.lib.curl_easy_setopt(self._handle, CURLOPT_DEBUGFUNCTION, ffi.NULL)
            self._handle = None
        self.forget()
        return self.hello

    def forget(self) -> None:
        """Stop listening without touching the handle (it is being closed)."""
        library = _lib()
        with library.lock:
            library.active.pop(self._token, None)
        self._handle = None

