"""The libcurl and BoringSSL functions inside curl_cffi that curl_cffi itself does not wrap.

The proxy relays the client's own HTTP bytes (its h2 frames, its HTTP/1 head) inside a TLS
connection whose ClientHello is mirrored by curl-impersonate. For that it needs, on one libcurl
easy handle in CONNECT_ONLY mode:

- ``curl_easy_send`` / ``curl_easy_recv`` (exported by the library): plaintext in and out;
- the client's exact ALPN list and ALPS protocols: libcurl only offers ALPN for ``https://``
  URLs and then installs its own HTTP/2 layer, which would re-frame our bytes. So the proxy uses
  a URL scheme with TLS and no HTTP (``gophers://``) and sets ALPN (``SSL_CTX_set_alpn_protos``)
  and ALPS (``SSL_add_application_settings``) itself, from an ``SSL_CTX_FUNCTION`` callback and
  a BoringSSL info callback at handshake start; the protocol the server chose is read with
  ``SSL_get0_alpn_selected`` when the handshake is done;
- optionally ``SSL_CTX_set_keylog_callback`` for NSS key-log lines;
- the TLS policy (``mirror.tls_policy``): the version bounds the client offered
  (``SSL_CTX_set_min/max_proto_version``), a verify callback that checks the verified chain
  (``X509_STORE_CTX_get0_chain``, each certificate DER-encoded with ``i2d_X509``; results are
  cached per chain) once libcurl's verification of it has passed, and after the handshake the
  version and cipher suite the server chose (``SSL_version``, ``SSL_get_current_cipher``);
- one ``X509_STORE`` per CA file, loaded once and shared by every connection's SSL_CTX
  (``SSL_CTX_set_cert_store`` in the same callback): libcurl would otherwise parse the whole CA
  bundle again for each connection (a system bundle: ~4 ms of CPU per upstream handshake);
- a cache of verified chains (``mirror.verified_chains``) in front of BoringSSL's chain
  verification: ``SSL_CTX_set_cert_verify_callback`` replaces ``X509_verify_cert``; a chain
  the server sent byte for byte as before, verified against the same CA file (path and stamp),
  is not built and checked again while its entry is valid; otherwise ``X509_verify_cert`` runs
  (and with it the verify callback above) and a success is stored. A hit still holds the
  verified path to the TLS policy; libcurl checks the host name on the leaf itself, and
  BoringSSL the handshake's signature with the leaf's key, on every connection. A build
  without these symbols verifies every chain, as before.

BoringSSL is linked statically and not exported, so those addresses come from the shared
object's symbol table (``elf_symbols``), relative to an exported libcurl function. Everything is
checked at load: a curl_cffi build without these symbols gives one ``NativeError`` naming what is
missing, never a crash.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import cffi

from mirror.tls_policy import (
    TlsPolicyError,
    check_chain,
    check_server_choice,
    legacy_signature_scheme,
)
from mirror.upstream.curl.elf_symbols import ElfError, function_offsets
from mirror.upstream.curl.hello_capture import HelloCapture
from mirror.verified_chains import VerifiedChains
from mirror.wire.tls import ClientHello

CURLE_OK = 0
CURLE_AGAIN = 81
CURLINFO_ACTIVESOCKET = 0x500000 + 44
CURLOPT_CONNECT_TO = 10243
CURLOPT_SOCKOPTFUNCTION = 20148
CURLOPT_SOCKOPTDATA = 10149
CURLSOCKTYPE_IPCXN = 0
CURL_SOCKOPT_ERROR = 1
CURLOPT_SSL_CTX_FUNCTION = 20108
CURLOPT_SSL_CTX_DATA = 10109
CURLOPT_CAINFO = 10065
CURLOPT_CAPATH = 10097
SSL_CB_HANDSHAKE_START = 0x10

_CDEF = """
int curl_easy_send(void *handle, const void *buffer, size_t length, size_t *sent);
int curl_easy_recv(void *handle, void *buffer, size_t length, size_t *received);
int curl_easy_setopt(void *handle, int option, ...);
int curl_easy_getinfo(void *handle, int info, ...);
struct curl_slist;
struct curl_slist *curl_slist_append(struct curl_slist *list, const char *string);
void curl_slist_free_all(struct curl_slist *list);
typedef int (*sockopt_fn)(void *userdata, int fd, int purpose);
typedef int (*ssl_ctx_fn)(void *curl, void *ssl_ctx, void *userdata);
typedef void (*info_fn)(const void *ssl, int type, int value);
typedef void (*keylog_fn)(const void *ssl, const char *line);
typedef int (*verify_fn)(int preverify_ok, void *store_ctx);
typedef int (*cert_verify_fn)(void *store_ctx, void *arg);
typedef int (*multi_socket_fn)(void *easy, int fd, int what, void *userp, void *socketp);
typedef int (*multi_timer_fn)(void *multi, long timeout_ms, void *userp);
typedef struct { int msg; void *easy_handle; union { void *whatever; int result; } data; } CURLMsg;
void *curl_multi_init(void);
int curl_multi_setopt(void *multi, int option, ...);
int curl_multi_add_handle(void *multi, void *easy);
int curl_multi_remove_handle(void *multi, void *easy);
int curl_multi_socket_action(void *multi, int fd, int ev_bitmask, int *running);
CURLMsg *curl_multi_info_read(void *multi, int *msgs_in_queue);
int curl_multi_cleanup(void *multi);
const char *curl_multi_strerror(int code);
"""

_BORINGSSL = {
    "SSL_CTX_set_alpn_protos": "int(*)(void *, const unsigned char *, unsigned)",
    "SSL_CTX_set_info_callback": "void(*)(void *, info_fn)",
    "SSL_CTX_set_keylog_callback": "void(*)(void *, keylog_fn)",
    "SSL_add_application_settings":
        "int(*)(void *, const unsigned char *, size_t, const unsigned char *, size_t)",
    "SSL_set_alps_use_new_codepoint": "void(*)(void *, int)",
    "SSL_get0_alpn_selected": "void(*)(const void *, const unsigned char **, unsigned *)",
    "SSL_get_SSL_CTX": "void *(*)(const void *)",
    "SSL_CTX_set_cert_store": "void(*)(void *, void *)",
    "X509_STORE_new": "void *(*)(void)",
    "X509_STORE_load_locations": "int(*)(void *, const char *, const char *)",
    "X509_STORE_up_ref": "int(*)(void *)",
    "X509_STORE_free": "void(*)(void *)",
    "SSL_CTX_set_min_proto_version": "int(*)(void *, uint16_t)",
    "SSL_CTX_set_max_proto_version": "int(*)(void *, uint16_t)",
    "SSL_CTX_set_verify": "void(*)(void *, int, verify_fn)",
    "SSL_get_ex_data_X509_STORE_CTX_idx": "int(*)(void)",
    "X509_STORE_CTX_get_ex_data": "void *(*)(void *, int)",
    "X509_STORE_CTX_get_error_depth": "int(*)(void *)",
    "X509_STORE_CTX_set_error": "void(*)(void *, int)",
    "X509_STORE_CTX_get0_chain": "void *(*)(void *)",
    "OPENSSL_sk_num": "size_t(*)(const void *)",
    "OPENSSL_sk_value": "void *(*)(const void *, size_t)",
    "i2d_X509": "int(*)(void *, unsigned char **)",
    "SSL_version": "int(*)(const void *)",
    "SSL_get_current_cipher": "const void *(*)(const void *)",
    "SSL_CIPHER_get_protocol_id": "uint16_t(*)(const void *)",
    "SSL_get_peer_signature_algorithm": "uint16_t(*)(const void *)",
    "SSL_CIPHER_standard_name": "const char *(*)(const void *)",
}
# the verified-chain cache's: optional, a build without them verifies every chain
_CHAIN_CACHE_FUNCTIONS = {
    "SSL_CTX_set_cert_verify_callback": "void(*)(void *, cert_verify_fn, void *)",
    "X509_verify_cert": "int(*)(void *)",
    "X509_STORE_CTX_get_error": "int(*)(void *)",
    "X509_STORE_CTX_get0_cert": "void *(*)(void *)",
    "X509_STORE_CTX_get0_untrusted": "void *(*)(void *)",
    "X509_STORE_CTX_get0_store": "void *(*)(void *)",
    "SSL_get0_ech_name_override": "void(*)(const void *, const char **, size_t *)",
}
SSL_VERIFY_PEER = 0x01
X509_V_OK = 0
X509_V_ERR_APPLICATION_VERIFICATION = 50
PROXY_MIN_VERSION = 0x0303   # mirror's own TLS to an https:// upstream proxy: TLS 1.2 at least


class NativeError(RuntimeError):
    """curl_cffi's library lacks a function the proxy needs (or could not be read)."""


@dataclass(slots=True)
class TlsSettings:
    """What one upstream handshake must offer beyond the curl_cffi Fingerprint, and what it got.

    ``alpn_wire`` is the ALPN extension's protocol list as sent by the client (length-prefixed
    entries, GREASE included); ``alps`` the ALPS protocols; ``alps_new_codepoint`` which ALPS
    codepoint to use. ``selected_alpn`` is filled in when the handshake completes; ``keylog``,
    when set, receives NSS key-log lines.
    """

    alpn_wire: bytes = b""
    alps: list[bytes] = field(default_factory=list)
    alps_new_codepoint: bool = False
    keylog: Callable[[str], None] | None = None
    prepare_socket: Callable[[int], None] | None = None   # the fd, before libcurl connects it
    selected_alpn: bytes | None = None
    handshake_done: bool = False
    ssl: object = None                # the SSL*, kept from handshake start (valid while open)
    proxy_tls: bool = False           # an https:// upstream proxy's own handshake comes first
    cert_store: object = None         # a shared X509_STORE (``Native.cert_store``) to verify with
    verify: bool = True               # False: --insecure-upstream, no certificate checks at all
    version_bounds: tuple[int, int] | None = None   # (lowest, highest) version the client offered
    hello: ClientHello | None = None  # the client's ClientHello (``check_server_choice``)
    offered_groups: tuple[int, ...] = ()            # the client's supported_groups
    policy_error: str | None = None   # why the policy refused this handshake, if it did
    hello_capture: HelloCapture | None = None      # a HelloCapture: installed on the upstream's SSL_CTX


class Native:
    """Loaded once per process; the callbacks it installs are shared by every handle."""

    def __init__(self) -> None:
        import curl_cffi._wrapper as wrapper
        from curl_cffi._wrapper import ffi as curl_ffi

        self._curl_ffi = curl_ffi
        self.ffi = cffi.FFI()
        self.ffi.cdef(_CDEF)
        path = wrapper.__file__
        try:
            self.lib = self.ffi.dlopen(path)
            with open(path, "rb") as f:
                offsets = function_offsets(f.read(), [*_BORINGSSL, *_CHAIN_CACHE_FUNCTIONS,
                                                  "curl_easy_send"])
        except (OSError, ElfError) as error:
            raise NativeError(f"cannot read curl_cffi's library {path}: {error}") from None
        missing = [name for name in [*_BORINGSSL, "curl_easy_send"] if name not in offsets]
        if missing:
            raise NativeError(f"curl_cffi's library {path} has no symbol(s) {missing}; this "
                              "curl_cffi build cannot relay mirrored TLS")
        base = int(self.ffi.cast("uintptr_t", self.lib.curl_easy_send)) - offsets["curl_easy_send"]
        self.ssl = {name: self.ffi.cast(sig, base + offsets[name]) for name, sig in _BORINGSSL.items()}
        # the verified-chain cache, when this build has every function it needs
        self.verified_chains: VerifiedChains | None = None
        if all(name in offsets for name in _CHAIN_CACHE_FUNCTIONS):
            self.ssl.update({name: self.ffi.cast(sig, base + offsets[name])
                             for name, sig in _CHAIN_CACHE_FUNCTIONS.items()})
            self.verified_chains = VerifiedChains()
        self._store_trust: dict[int, tuple[str, int, int]] = {}   # X509_STORE* -> CA file, stamp
        self._lock = threading.Lock()
        self._by_ctx: dict[int, TlsSettings] = {}
        self._by_id: dict[int, TlsSettings] = {}
        self._next_id = 1
        self._stores: dict[str, tuple[tuple[int, int], object]] = {}
        self._ssl_ctx_cb = self.ffi.callback("int(void *, void *, void *)", self._on_ssl_ctx,
                                             onerror=self._callback_error_int)
        self._sockopt_cb = self.ffi.callback("int(void *, int, int)", self._on_sockopt,
                                             onerror=self._callback_error_sockopt)
        self._info_cb = self.ffi.callback("void(const void *, int, int)", self._on_info,
                                          onerror=self._callback_error)
        self._keylog_cb = self.ffi.callback("void(const void *, const char *)", self._on_keylog,
                                            onerror=self._callback_error)
        self._verify_cb = self.ffi.callback("int(int, void *)", self._on_verify,
                                            onerror=self._callback_error_verify)
        self._cert_verify_cb = self.ffi.callback("int(void *, void *)", self._on_cert_verify,
                                                 onerror=self._callback_error_verify)
        self._proxy_ctx: dict[int, TlsSettings] = {}    # an https:// upstream proxy's SSL_CTX
        self._chains: OrderedDict[tuple[bytes, ...], str | None] = OrderedDict()
        self._ssl_ex_index = self.ssl["SSL_get_ex_data_X509_STORE_CTX_idx"]()

    # --- handles -----------------------------------------------------------------------------
    def handle(self, curl) -> object:
        """The raw CURL* of a curl_cffi ``Curl`` object, as this module's ``void *``."""
        return self.ffi.cast("void *", int(self._curl_ffi.cast("uintptr_t", curl._curl)))

    def attach(self, handle, settings: TlsSettings) -> int:
        """Make the next handshake on ``handle`` offer ``settings``; returns a token for detach."""
        with self._lock:
            token = self._next_id
            self._next_id += 1
            self._by_id[token] = settings
        self.lib.curl_easy_setopt(handle, CURLOPT_SSL_CTX_FUNCTION,
                                  self.ffi.cast("ssl_ctx_fn", self._ssl_ctx_cb))
        self.lib.curl_easy_setopt(handle, CURLOPT_SSL_CTX_DATA, self.ffi.cast("void *", token))
        if settings.prepare_socket is not None:
            self.lib.curl_easy_setopt(handle, CURLOPT_SOCKOPTFUNCTION,
                                      self.ffi.cast("sockopt_fn", self._sockopt_cb))
            self.lib.curl_easy_setopt(handle, CURLOPT_SOCKOPTDATA, self.ffi.cast("void *", token))
        return token

    def cert_store(self, path: str):
        """The X509_STORE holding the certificates of the CA file ``path``: loaded once, again
        only when the file changes. Raises ``NativeError`` if it cannot be loaded."""
        try:
            info = os.stat(path)
        except OSError as error:
            raise NativeError(f"cannot read the CA file {path}: {error.strerror}") from None
        stamp = (info.st_mtime_ns, info.st_size)
        with self._lock:
            cached = self._stores.get(path)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            store = self.ssl["X509_STORE_new"]()
            if store == self.ffi.NULL:
                raise NativeError("X509_STORE_new failed")
            if self.ssl["X509_STORE_load_locations"](store, os.fsencode(path), self.ffi.NULL) != 1:
                self.ssl["X509_STORE_free"](store)
                raise NativeError(f"no CA certificate could be loaded from {path}")
            if cached is not None:
                # SSL_CTXs using it hold their own ref; verified on them, a chain is not cached
                self._store_trust.pop(int(self.ffi.cast("uintptr_t", cached[1])), None)
                self.ssl["X509_STORE_free"](cached[1])
            self._stores[path] = (stamp, store)
            self._store_trust[int(self.ffi.cast("uintptr_t", store))] = (path, *stamp)
            return store

    def skip_ca_loading(self, curl, handle) -> None:
        """Make libcurl load no CA file or directory for this handle (its SSL_CTX gets a
        shared store instead, or verification is off)."""
        curl._skip_cacert = True          # curl_cffi would otherwise set certifi's bundle
        self.lib.curl_easy_setopt(handle, CURLOPT_CAINFO, self.ffi.NULL)
        self.lib.curl_easy_setopt(handle, CURLOPT_CAPATH, self.ffi.NULL)

    def detach(self, token: int) -> None:
        with self._lock:
            settings = self._by_id.pop(token, None)
            if settings is not None:
                for ctx in [c for c, s in self._by_ctx.items() if s is settings]:
                    del self._by_ctx[ctx]
                for ctx in [c for c, s in self._proxy_ctx.items() if s is settings]:
                    del self._proxy_ctx[ctx]

    def set_list(self, handle, option: int, items: list[str]):
        """Set a string-list option (which curl_cffi's setopt cannot). Returns the list, which
        must outlive the handle: pass it to ``free_list`` after closing it."""
        items_list = self.ffi.NULL
        for item in items:
            items_list = self.lib.curl_slist_append(items_list, item.encode())
        self.lib.curl_easy_setopt(handle, option, items_list)
        return items_list

    def free_list(self, items_list) -> None:
        if items_list:
            self.lib.curl_slist_free_all(items_list)

    def send(self, handle, data) -> tuple[int, int]:
        """(curl code, bytes sent)."""
        sent = self.ffi.new("size_t *")
        code = self.lib.curl_easy_send(handle, self.ffi.from_buffer(data), len(data), sent)
        return code, sent[0]

    def recv_into(self, handle, buffer) -> tuple[int, int]:
        """(curl code, bytes received) into a writable buffer (bytearray)."""
        received = self.ffi.new("size_t *")
        code = self.lib.curl_easy_recv(handle, self.ffi.from_buffer(buffer), len(buffer), received)
        return code, received[0]

    def active_socket(self, handle) -> int:
        fd = self.ffi.new("long long *")
        if self.lib.curl_easy_getinfo(handle, CURLINFO_ACTIVESOCKET, fd) != CURLE_OK:
            return -1
        return int(fd[0])

    # --- callbacks (run on the thread doing the handshake) -------------------------------------
    def _on_ssl_ctx(self, _curl, ssl_ctx, userdata) -> int:
        token = int(self.ffi.cast("uintptr_t", userdata))
        with self._lock:
            settings = self._by_id.get(token)
            if settings is None:
                return CURLE_OK
            key = int(self.ffi.cast("uintptr_t", ssl_ctx))
            proxy = settings.proxy_tls
            if proxy:                         # the tunnel's TLS to the proxy: not ours to shape
                settings.proxy_tls = False
                self._proxy_ctx[key] = settings
            else:
                self._by_ctx[key] = settings
        if proxy:                             # ... but held to the same policy
            if not self.ssl["SSL_CTX_set_min_proto_version"](ssl_ctx, PROXY_MIN_VERSION):
                return 35
            if settings.verify:
                self.ssl["SSL_CTX_set_verify"](ssl_ctx, SSL_VERIFY_PEER, self._verify_cb)
            return CURLE_OK
        if settings.hello_capture is not None:
            settings.hello_capture.install(ssl_ctx)
        if settings.version_bounds is not None:
            low, high = (min(max(v, 0x0301), 0x0304) for v in settings.version_bounds)
            if not (self.ssl["SSL_CTX_set_min_proto_version"](ssl_ctx, low)
                    and self.ssl["SSL_CTX_set_max_proto_version"](ssl_ctx, high)):
                return 35                     # CURLE_SSL_CONNECT_ERROR
        if settings.verify:
            self.ssl["SSL_CTX_set_verify"](ssl_ctx, SSL_VERIFY_PEER, self._verify_cb)
        if settings.cert_store is not None:
            self.ssl["X509_STORE_up_ref"](settings.cert_store)
            self.ssl["SSL_CTX_set_cert_store"](ssl_ctx, settings.cert_store)  # takes that ref
            if settings.verify and self.verified_chains is not None:
                self.ssl["SSL_CTX_set_cert_verify_callback"](ssl_ctx, self._cert_verify_cb,
                                                             self.ffi.NULL)
        # SSL_CTX_set_alpn_protos returns 0 on success (the historical OpenSSL convention)
        if settings.alpn_wire and self.ssl["SSL_CTX_set_alpn_protos"](
                ssl_ctx, settings.alpn_wire, len(settings.alpn_wire)):
            return 27  # CURLE_OUT_OF_MEMORY: the only failure BoringSSL reports here
        self.ssl["SSL_CTX_set_info_callback"](ssl_ctx, self._info_cb)
        if settings.keylog is not None:
            self.ssl["SSL_CTX_set_keylog_callback"](ssl_ctx, self._keylog_cb)
        return CURLE_OK

    def _on_sockopt(self, userdata, fd: int, purpose: int) -> int:
        if purpose != CURLSOCKTYPE_IPCXN:
            return CURLE_OK
        with self._lock:
            settings = self._by_id.get(int(self.ffi.cast("uintptr_t", userdata)))
        if settings is not None and settings.prepare_socket is not None:
            settings.prepare_socket(fd)
        return CURLE_OK

    def _settings_for(self, ssl) -> TlsSettings | None:
        ctx = int(self.ffi.cast("uintptr_t", self.ssl["SSL_get_SSL_CTX"](ssl)))
        with self._lock:
            return self._by_ctx.get(ctx)

    def _on_info(self, ssl, kind: int, _value: int) -> None:
        """At handshake start: add the ALPS protocols, keep the SSL* for ``finish``, and take
        this callback off the connection's (private) SSL_CTX. BoringSSL calls an info callback
        some twenty times per handshake: each a call back into Python for nothing."""
        if kind != SSL_CB_HANDSHAKE_START:
            return
        settings = self._settings_for(ssl)
        if settings is None or settings.ssl is not None:
            return
        mutable = self.ffi.cast("void *", ssl)
        settings.ssl = mutable
        if settings.alps:
            self.ssl["SSL_set_alps_use_new_codepoint"](mutable, int(settings.alps_new_codepoint))
            for proto in settings.alps:
                self.ssl["SSL_add_application_settings"](mutable, proto, len(proto), b"", 0)
        self.ssl["SSL_CTX_set_info_callback"](self.ssl["SSL_get_SSL_CTX"](ssl), self.ffi.NULL)

    def _on_verify(self, ok: int, store_ctx) -> int:
        """BoringSSL's verify callback, per certificate of the chain it built (root first):
        errors stay errors; at the leaf, a chain that verified is held to the TLS policy."""
        if not ok:
            return 0
        if self.ssl["X509_STORE_CTX_get_error_depth"](store_ctx) != 0:
            return 1
        ssl = self.ssl["X509_STORE_CTX_get_ex_data"](store_ctx, self._ssl_ex_index)
        ctx = int(self.ffi.cast("uintptr_t", self.ssl["SSL_get_SSL_CTX"](ssl)))
        with self._lock:
            settings = self._by_ctx.get(ctx)
            proxy = settings is None
            if proxy:
                settings = self._proxy_ctx.get(ctx)
        if settings is None:
            return 1                          # not one of ours (never happens): libcurl decides
        groups = () if proxy else settings.offered_groups
        refused = self._chain_verdict(self._chain_der(store_ctx), groups)
        if refused is None:
            return 1
        settings.policy_error = f"upstream proxy: {refused}" if proxy else refused
        self.ssl["X509_STORE_CTX_set_error"](store_ctx, X509_V_ERR_APPLICATION_VERIFICATION)
        return 0

    def _on_cert_verify(self, store_ctx, _arg) -> int:
        """BoringSSL's chain verification (in place of ``X509_verify_cert``), on an SSL_CTX
        that verifies with a shared store: the chain the server sent, verified before against
        the same CA file, is taken from ``verified_chains`` and only held to the policy again;
        any other is verified in full and, when it passes, remembered."""
        ssl = self.ssl["X509_STORE_CTX_get_ex_data"](store_ctx, self._ssl_ex_index)
        cache = self.verified_chains
        key = self._verified_chain_key(store_ctx, ssl)
        if cache is None or key is None:
            return self.ssl["X509_verify_cert"](store_ctx)
        verified = cache.get(key)
        if verified is not None:
            settings = self._settings_for(ssl)
            refused = self._chain_verdict(verified, settings.offered_groups if settings else ())
            if refused is None:
                return 1                      # the store context's error is still X509_V_OK
            if settings is not None:
                settings.policy_error = refused
            self.ssl["X509_STORE_CTX_set_error"](store_ctx, X509_V_ERR_APPLICATION_VERIFICATION)
            return 0
        result = self.ssl["X509_verify_cert"](store_ctx)
        if result == 1 and self.ssl["X509_STORE_CTX_get_error"](store_ctx) == X509_V_OK:
            self._remember(key, self._chain_der(store_ctx))
        return result

    def _verified_chain_key(self, store_ctx, ssl) -> tuple | None:
        """(CA file, its stamp, the sent chain's DER) — None when the store is not one of
        ``cert_store``'s or the name to verify is not the connection's own (an ECH retry)."""
        name_len = self.ffi.new("size_t *")
        self.ssl["SSL_get0_ech_name_override"](ssl, self.ffi.new("const char **"), name_len)
        if name_len[0]:
            return None
        store = int(self.ffi.cast("uintptr_t", self.ssl["X509_STORE_CTX_get0_store"](store_ctx)))
        with self._lock:
            trust = self._store_trust.get(store)
        if trust is None:
            return None
        sent = [self.ssl["X509_STORE_CTX_get0_cert"](store_ctx)]
        untrusted = self.ssl["X509_STORE_CTX_get0_untrusted"](store_ctx)
        if untrusted != self.ffi.NULL:
            sent += [self.ssl["OPENSSL_sk_value"](untrusted, i)
                     for i in range(self.ssl["OPENSSL_sk_num"](untrusted))]
        return (*trust, *(self._der(cert) for cert in sent))

    def _remember(self, key: tuple, verified: tuple[bytes, ...]) -> None:
        from cryptography import x509

        try:
            certs = [x509.load_der_x509_certificate(der) for der in verified]
        except ValueError:
            return
        assert self.verified_chains is not None
        self.verified_chains.put_path(key, verified, certs)

    def _chain_der(self, store_ctx) -> tuple[bytes, ...]:
        chain = self.ssl["X509_STORE_CTX_get0_chain"](store_ctx)
        return tuple(self._der(self.ssl["OPENSSL_sk_value"](chain, i))
                     for i in range(self.ssl["OPENSSL_sk_num"](chain)))

    def _der(self, cert) -> bytes:
        size = self.ssl["i2d_X509"](cert, self.ffi.NULL)
        if size <= 0:
            raise NativeError("a certificate of the chain could not be encoded")
        buffer = self.ffi.new("unsigned char[]", size)
        out = self.ffi.new("unsigned char **", buffer)
        self.ssl["i2d_X509"](cert, out)
        return bytes(self.ffi.buffer(buffer, size))

    CHAIN_CACHE = 256

    def _chain_verdict(self, ders: tuple[bytes, ...], groups: tuple[int, ...]) -> str | None:
        """Why the policy refuses this chain (None: it does not); cached per chain."""
        from cryptography import x509

        key = (*ders, repr(groups).encode())
        with self._lock:
            if key in self._chains:
                self._chains.move_to_end(key)
                return self._chains[key]
        try:
            check_chain([x509.load_der_x509_certificate(der) for der in ders], groups)
            verdict = None
        except TlsPolicyError as error:
            verdict = str(error)
        except ValueError as error:
            verdict = f"a certificate of the chain cannot be read: {error}"
        with self._lock:
            self._chains[key] = verdict
            while len(self._chains) > self.CHAIN_CACHE:
                self._chains.popitem(last=False)
        return verdict

    def finish(self, settings: TlsSettings) -> None:
        """After a successful handshake: the protocol the server chose (ALPN); the version and
        cipher suite it chose are held to the policy (``TlsPolicyError``)."""
        if settings.ssl is None:
            return
        if settings.hello is not None:
            version = self.ssl["SSL_version"](settings.ssl)
            suite = self.ssl["SSL_get_current_cipher"](settings.ssl)
            cipher = self.ssl["SSL_CIPHER_get_protocol_id"](suite)
            # BoringSSL records the server's signature scheme from TLS 1.2 on; before, the
            # suite implies it
            signature = (self.ssl["SSL_get_peer_signature_algorithm"](settings.ssl)
                         or legacy_signature_scheme(version, self.ffi.string(
                             self.ssl["SSL_CIPHER_standard_name"](suite)).decode("ascii")))
            check_server_choice(settings.hello, version, cipher, signature=signature or None)
        out = self.ffi.new("const unsigned char **")
        length = self.ffi.new("unsigned *")
        self.ssl["SSL_get0_alpn_selected"](settings.ssl, out, length)
        settings.selected_alpn = bytes(self.ffi.buffer(out[0], length[0])) if length[0] else None
        settings.handshake_done = True

    def _on_keylog(self, ssl, line) -> None:
        settings = self._settings_for(ssl)
        if settings is not None and settings.keylog is not None:
            settings.keylog(self.ffi.string(line).decode("ascii", "replace"))

    @staticmethod
    def _callback_error(_exc_type, _exc, _tb) -> None:
        return None

    @staticmethod
    def _callback_error_sockopt(_exc_type, _exc, _tb) -> int:
        return CURL_SOCKOPT_ERROR  # the connection fails rather than leave without its SYN plan

    @staticmethod
    def _callback_error_verify(_exc_type, _exc, _tb) -> int:
        return 0   # a chain that could not be checked is refused

    @staticmethod
    def _callback_error_int(_exc_type, _exc, _tb) -> int:
        return 35  # CURLE_SSL_CONNECT_ERROR: never let a Python error pass silently as success


_native: Native | None = None
_native_lock = threading.Lock()


def native() -> Native:
    """The process-wide ``Native`` (loaded on first use; raises ``NativeError``)."""
    global _native
    if _native is None:
        with _native_lock:
            if _native is None:
                _native = Native()
    return _native
