"""The ClientHello BoringSSL actually writes on one upstream connection, kept for the record.

BoringSSL reports every handshake message it writes to a message callback
(``SSL_CTX_set_msg_callback``; the record headers come as separate calls). A ``HelloCapture``
is installed on the connection's own SSL_CTX (``install(ssl_ctx)``, from the SSL_CTX callback
``mirror.upstream.curl.native`` runs for the upstream handshake, never for the tunnel's TLS to an
``https://`` upstream proxy): the callback keeps the first ClientHello message (``01 len
body``, bounded) and then takes itself off the connection (``SSL_set_msg_callback(ssl,
NULL)``), so the rest of the handshake and every relayed record cost nothing. ``hello`` is what
was captured, ``forget()`` drops a capture whose handshake never started.

This costs two calls into Python per handshake. libcurl's own debug callback
(``CURLOPT_DEBUGFUNCTION``, ``CURLINFO_SSL_DATA_OUT``) sees the same bytes, but only with
``CURLOPT_VERBOSE``, which adds some forty calls and libcurl's text formatting per handshake
(tools/bench_hello_capture.py measured both).

BoringSSL is linked statically into curl_cffi's library and not exported: the two functions'
addresses come from its symbol table (``elf_symbols``), like ``native``'s; a library without
them gives a capture that captures nothing, never an error on the connection.
"""

from __future__ import annotations

import threading

import cffi

from mirror.upstream.curl.elf_symbols import ElfError, function_offsets

HANDSHAKE_CONTENT = 22
MIN_HELLO = 4 + 38                 # handshake header, then the shortest ClientHello body
MAX_HELLO = 1 << 16

_CDEF = """
int curl_easy_send(void *handle, const void *buffer, size_t length, size_t *sent);
typedef void (*msg_fn)(int is_write, int version, int content_type, const void *buf,
                       size_t len, void *ssl, void *arg);
"""
_BORINGSSL = {
    "SSL_CTX_set_msg_callback": "void(*)(void *, msg_fn)",
    "SSL_set_msg_callback": "void(*)(void *, msg_fn)",
    "SSL_get_SSL_CTX": "void *(*)(const void *)",
}


class _Library:
    """The BoringSSL functions and the one message callback every capture shares."""

    def __init__(self) -> None:
        import curl_cffi._wrapper as wrapper

        self.ffi = cffi.FFI()
        self.ffi.cdef(_CDEF)
        self.by_ctx: dict[int, HelloCapture] = {}
        self.lock = threading.Lock()
        self.ssl: dict = {}
        try:
            lib = self.ffi.dlopen(wrapper.__file__)
            with open(wrapper.__file__, "rb") as f:
                offsets = function_offsets(f.read(), [*_BORINGSSL, "curl_easy_send"])
        except (OSError, ElfError):
            return
        if all(name in offsets for name in [*_BORINGSSL, "curl_easy_send"]):
            base = int(self.ffi.cast("uintptr_t", lib.curl_easy_send)) - offsets["curl_easy_send"]
            self.ssl = {name: self.ffi.cast(sig, base + offsets[name])
                        for name, sig in _BORINGSSL.items()}
        self.callback = self.ffi.callback(
            "void(int, int, int, const void *, size_t, void *, void *)", self._on_message,
            onerror=self._error)

    def _on_message(self, is_write, _version, content_type, buf, size, ssl, _arg) -> None:
        if not is_write or content_type != HANDSHAKE_CONTENT or not MIN_HELLO <= size <= MAX_HELLO:
            return
        data = self.ffi.buffer(buf, size)
        if data[0] != b"\x01":
            return
        ctx = int(self.ffi.cast("uintptr_t", self.ssl["SSL_get_SSL_CTX"](ssl)))
        with self.lock:
            capture = self.by_ctx.pop(ctx, None)
        if capture is not None and capture.hello is None:
            capture.hello = bytes(data)
        self.ssl["SSL_set_msg_callback"](ssl, self.ffi.NULL)   # one hello per connection

    @staticmethod
    def _error(_exc_type, _exc, _tb) -> None:
        return None       # a capture that failed leaves the handshake alone


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
    """The first ClientHello written on one connection (``hello``: bytes, or None)."""

    __slots__ = ("_ctx", "hello")

    def __init__(self) -> None:
        self.hello: bytes | None = None
        self._ctx = 0

    def install(self, ssl_ctx) -> None:
        """Capture the next ClientHello of connections made from ``ssl_ctx`` (an SSL_CTX*, as
        a cffi pointer of any FFI or its address); called before its SSL is made."""
        library = _lib()
        if not library.ssl:
            return
        ffi = library.ffi
        address = ssl_ctx if isinstance(ssl_ctx, int) else int(ffi.cast("uintptr_t", ssl_ctx))
        with library.lock:
            library.by_ctx[address] = self
        self._ctx = address
        library.ssl["SSL_CTX_set_msg_callback"](ffi.cast("void *", address), library.callback)

    def forget(self) -> None:
        """Stop waiting for a hello (the connection is being closed)."""
        if self._ctx:
            library = _lib()
            with library.lock:
                if library.by_ctx.get(self._ctx) is self:
                    del library.by_ctx[self._ctx]
            self._ctx = 0
