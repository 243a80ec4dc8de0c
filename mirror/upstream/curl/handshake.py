"""Open the proxy's upstream TLS connection with a mirrored ClientHello, then move raw bytes.

One libcurl easy handle per upstream connection, in CONNECT_ONLY mode on a ``gophers://`` URL
(TLS with no HTTP layer of libcurl's own; see ``native``): curl-impersonate sends the hello
described by the ``RelayPlan``, verifies the server's certificate, and afterwards
``recv_into`` / ``send`` move the plaintext. ``MirroredHandshake`` configures the handle; its
``perform`` (or ``open_mirrored_tls``) blocks for the TCP and TLS handshakes, while the proxy
drives the same handle from its event loop through a multi handle (``multi.CurlLoop``)
and finishes it with ``connected``. ``recv_into`` / ``send`` never block.

The options a plan sets (the fingerprint's dozens of them, and the fixed ones) are set once,
on a template handle kept per plan; each connection's handle is a ``curl_easy_duphandle`` of
it (one C call instead of a Python ``setopt`` per option) and gets only what is its own: URL,
route, proxy, and the native callbacks.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import queue
import threading
import time
from collections import OrderedDict

from curl_cffi import Curl, CurlError, CurlOpt

from mirror.emit.relay_plan import RelayPlan
from mirror.emit.routes import UpstreamProxy
from mirror.tls_policy import TlsPolicyError, version_name
from mirror.upstream.connection import POLICY_STAGE, UpstreamError, UpstreamTarget
from mirror.upstream.curl.fingerprint_options import apply_tls_fingerprint
from mirror.upstream.curl.hello_capture import HelloCapture
from mirror.upstream.curl.native import (
    CURLE_AGAIN,
    CURLE_OK,
    CURLOPT_CONNECT_TO,
    NativeError,
    TlsSettings,
    native,
)
from mirror.upstream.trust import system_ca_file

# curl error codes -> the stage that failed
_STAGES = {5: "upstream-dns", 6: "upstream-dns", 7: "upstream-connect", 28: "upstream-timeout",
           35: "upstream-tls", 51: "upstream-certificate", 53: "upstream-tls",
           58: "upstream-tls", 59: "upstream-tls", 60: "upstream-certificate",
           77: "upstream-certificate", 83: "upstream-certificate", 90: "upstream-certificate",
           91: "upstream-certificate", 98: "upstream-tls"}


_PROXY_CODES = {56, 97}  # CONNECT refused by the proxy (e.g. 407); SOCKS5 failures


@functools.lru_cache(maxsize=1024)
def _url_host(host: str) -> str:
    """``host`` as it goes in a URL: an IPv6 address in brackets."""
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


class UpstreamTls:
    """A connected, verified upstream TLS connection carrying raw application bytes (an
    ``UpstreamConnection`` made by libcurl)."""

    __slots__ = ("_handle", "_lists", "_native", "_release", "_token", "alpn", "closed", "curl",
                 "engine", "engine_reason", "fd", "sent_hello", "settings")

    holds_output = False    # BoringSSL keeps a partly written record and ``send`` resumes it

    def __init__(self, curl: Curl, handle, token: int, settings: TlsSettings,
                 lists=None, release=None) -> None:
        self._lists = lists
        self._release = release      # called first on close (a multi handle lets go of it)
        self.curl = curl
        self._native = native()
        self._handle = handle
        self._token = token
        self.settings = settings
        self.fd = self._native.active_socket(handle)
        alpn = settings.selected_alpn
        self.alpn = alpn.decode("latin-1") if alpn is not None else None
        self.closed = False
        self.engine = "boringssl"
        self.engine_reason = ""
        self.sent_hello: bytes | None = None    # the ClientHello written (HelloCapture)

    def recv_into(self, buffer: bytearray) -> int | None:
        """Bytes read into ``buffer``; ``None`` if nothing is ready; 0 at end of stream."""
        code, count = self._native.recv_into(self._handle, buffer)
        if code == CURLE_OK:
            return count
        if code == CURLE_AGAIN:
            return None
        raise UpstreamError(f"upstream read failed (curl error {code})", "relay")

    def send(self, data, record_sizes=None) -> int:
        """Bytes accepted (0 when the socket is full). BoringSSL makes its own records:
        ``record_sizes`` is not used."""
        code, count = self._native.send(self._handle, data)
        if code in (CURLE_OK, CURLE_AGAIN):
            return count
        raise UpstreamError(f"upstream write failed (curl error {code})", "relay")

    def flush(self) -> bool:
        """Nothing to do: what ``send`` accepted, BoringSSL has written or holds for the next
        ``send`` of the rest."""
        return True

    def close(self) -> None:
        """Stop using the connection now. A multi handle's connection leaves the multi first
        (``release``: that closes it); the handle itself is cleaned up on a background thread
        so that never holds up the caller's event loop."""
        if not self.closed:
            self.closed = True
            self._native.detach(self._token)
            if self._release is not None:
                self._release(self._handle)
            _closer.put((self.curl, self._lists))


class _Closer:
    """One daemon thread that releases finished libcurl handles, in order, in batches: a
    handle waits up to ``INTERVAL`` seconds, so that a busy proxy wakes this thread (and hands
    it the interpreter lock) a few times a second instead of once per connection."""

    INTERVAL = 0.05

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def put(self, item) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="mirror-curl-close",
                                                    daemon=True)
                    self._thread.start()
        self._queue.put(item)

    def _run(self) -> None:
        nat = native()
        while True:
            item = self._queue.get()                 # blocks while nothing is closed
            time.sleep(self.INTERVAL)
            while item is not None:
                curl, lists = item
                try:
                    curl.close()
                    nat.free_list(lists)
                except Exception:  # one bad handle must not stop the others
                    logging.getLogger("mirror.upstream").exception("releasing a libcurl handle")
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None


_closer = _Closer()


def _configured(plan: RelayPlan, verify: bool, timeout: float) -> Curl:
    """A new easy handle with every option that depends only on the plan, ``verify`` and
    ``timeout``."""
    curl = Curl()
    try:
        apply_tls_fingerprint(curl, plan.plan.fingerprint)
        curl.setopt(CurlOpt.CONNECT_ONLY, 1)
        curl.setopt(CurlOpt.CONNECTTIMEOUT_MS, int(timeout * 1000))
        curl.setopt(CurlOpt.TIMEOUT_MS, int(timeout * 1000))
        curl.setopt(CurlOpt.NOSIGNAL, 1)
        # never resume a session the client did not: handles sharing a multi handle would
        # otherwise share its session cache and send a pre_shared_key of their own
        curl.setopt(CurlOpt.SSL_SESSIONID_CACHE, 0)
        curl.setopt(CurlOpt.TCP_NODELAY, 1)
        curl.setopt(CurlOpt.SSL_VERIFYPEER, int(verify))
        curl.setopt(CurlOpt.SSL_VERIFYHOST, 2 if verify else 0)
    except BaseException:
        curl.close()
        raise
    return curl


class _Templates:
    """Per plan (and verify, timeout), a configured handle that connections' handles are
    duplicated from. Bounded (LRU); an entry holds its plan, so the ``id`` in its key cannot
    be another plan's while it is cached."""

    SIZE = 256

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple, tuple[RelayPlan, Curl]] = OrderedDict()

    def new_curl(self, plan: RelayPlan, verify: bool, timeout: float) -> Curl:
        key = (id(plan), bool(verify), float(timeout))
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] is not plan:
                entry = self._entries[key] = (plan, _configured(plan, verify, timeout))
                while len(self._entries) > self.SIZE:
                    _, (_, old) = self._entries.popitem(last=False)
                    old.close()
            else:
                self._entries.move_to_end(key)
            return entry[1].duphandle()     # libcurl: one handle, one thread at a time


_templates = _Templates()


class MirroredHandshake:
    """One upstream connection being made: ``__init__`` configures the libcurl handle;
    ``perform()`` connects and handshakes, blocking, or a multi handle does (``CurlLoop``) and
    ``connected()`` / ``failure()`` say how it ended."""

    def __init__(self, target: UpstreamTarget, plan: RelayPlan, *, verify: bool = True,
                 ca_file: str | None = None, timeout: float = 10.0, keylog=None,
                 prepare_socket=None, proxy: UpstreamProxy | None = None) -> None:
        nat = self._nat = native()
        self.proxy = proxy
        self.plan = plan
        self.curl = curl = _templates.new_curl(plan, verify, timeout)
        self.handle = handle = nat.handle(curl)
        self.connect_to = None
        self.settings = TlsSettings(alpn_wire=plan.alpn_wire, alps=plan.alps,
                                    alps_new_codepoint=plan.alps_new_codepoint, keylog=keylog,
                                    prepare_socket=prepare_socket,
                                    proxy_tls=proxy is not None and proxy.scheme == "https",
                                    verify=verify, version_bounds=plan.version_bounds,
                                    hello=plan.hello, offered_groups=plan.offered_groups)
        # the hello BoringSSL writes, for the record (native installs it on the SSL_CTX)
        self.settings.hello_capture = self.hello_capture = HelloCapture()
        self.token = nat.attach(handle, self.settings)
        try:
            name = target.sni or target.host
            curl.setopt(CurlOpt.URL, f"gophers://{_url_host(name)}:{target.port}/")
            if target.sni and target.sni != target.host:
                # connect to the destination itself (an address, or a name to resolve — by
                # the proxy with socks5h / CONNECT), whatever the SNI says
                route = (f"{_url_host(target.sni)}:{target.port}:{_url_host(target.host)}:"
                         f"{target.port}")
                self.connect_to = nat.set_list(handle, CURLOPT_CONNECT_TO, [route])
            if proxy is not None:
                curl.setopt(CurlOpt.PROXY, proxy.url)
                curl.setopt(CurlOpt.HTTPPROXYTUNNEL, int(proxy.tunnels_http))
                if proxy.scheme == "https":
                    cafile = ca_file or system_ca_file()
                    if cafile:
                        curl.setopt(CurlOpt.PROXY_CAINFO, cafile)
                    curl.setopt(CurlOpt.PROXY_SSL_VERIFYPEER, int(verify))
                    curl.setopt(CurlOpt.PROXY_SSL_VERIFYHOST, 2 if verify else 0)
            nat.skip_ca_loading(curl, handle)
            cafile = (ca_file or system_ca_file()) if verify else None
            if cafile:
                try:
                    self.settings.cert_store = nat.cert_store(cafile)
                except NativeError as error:
                    raise UpstreamError(str(error), "upstream-certificate") from None
        except BaseException:
            self.abandon()
            raise

    def perform(self) -> UpstreamTls:
        """Connect and handshake (blocking). Raises ``UpstreamError``; the handle is released
        on failure."""
        ok = False
        try:
            try:
                self.curl.perform()
            except CurlError as error:
                raise (self._policy_error(curl_message=str(error))
                       or _upstream_error(error, self.proxy)) from None
            connection = self.connected()
            ok = True
            return connection
        finally:
            if not ok:
                self.abandon()

    def failure(self, code: int) -> UpstreamError:
        """The error for a transfer that ended with curl code ``code`` (a multi handle's)."""
        error = self.curl._get_error(code, "perform")
        return self._policy_error(curl_message=str(error)) or _upstream_error(error, self.proxy)

    def _policy_error(self, message: str | None = None,
                      curl_message: str = "") -> UpstreamError | None:
        """The error when the TLS policy refused the handshake (or ``message`` names why, or
        BoringSSL refused the server's choice for being outside the client's offer)."""
        message = message or self.settings.policy_error
        if message is None and self.plan is not None:
            low, high = self.plan.version_bounds
            span = version_name(low) if low == high else f"{version_name(low)} to {version_name(high)}"
            if "UNSUPPORTED_PROTOCOL" in curl_message:
                message = f"the server chose a TLS version the client did not offer ({span})"
            elif "WRONG_CIPHER_RETURNED" in curl_message or "UNKNOWN_CIPHER_RETURNED" in curl_message:
                message = "the server chose a cipher suite the client did not offer"
        if message is None:
            return None
        if self.proxy is not None:
            message = f"{self.proxy.redact(message)} (via {self.proxy.display})"
        return UpstreamError(f"refused by TLS policy: {message}", POLICY_STAGE)

    def connected(self, release=None) -> UpstreamTls:
        """The connection, once libcurl has completed the handshake (by ``perform`` or a
        multi handle: ``release(handle)`` then runs when it is closed). Raises
        ``UpstreamError``; the caller abandons the handle then."""
        try:
            self._nat.finish(self.settings)
        except TlsPolicyError as error:
            refusal = self._policy_error(str(error))
            raise (refusal or UpstreamError(str(error), POLICY_STAGE)) from None
        if not self.settings.handshake_done:
            raise UpstreamError("TLS handshake did not complete", "upstream-tls")
        connection = UpstreamTls(self.curl, self.handle, self.token, self.settings,
                                 self.connect_to, release)
        connection.sent_hello = self.hello_capture.hello
        if connection.fd < 0:
            connection.closed = True
            raise UpstreamError("libcurl gave no socket for the connection", "upstream-connect")
        return connection

    def abandon(self) -> None:
        self.hello_capture.forget()
        self._nat.detach(self.token)
        self.curl.close()
        self._nat.free_list(self.connect_to)
        self.connect_to = None


def open_mirrored_tls(target: UpstreamTarget, plan: RelayPlan, **options) -> UpstreamTls:
    """Connect to ``target`` and complete a TLS handshake that mirrors ``plan``. Blocking.

    With ``proxy``, the connection goes through that upstream proxy (HTTP CONNECT or SOCKS5,
    credentials from its URL) and the mirrored handshake happens inside the tunnel.
    Raises ``UpstreamError`` (with the stage: dns, connect, timeout, tls, certificate, proxy;
    messages never hold the proxy's password). ``prepare_socket(fd)``, if given, runs on the
    socket before libcurl connects it (TCP mirroring: socket options, the SYN rewrite plan).
    Options: verify, ca_file, timeout, keylog, prepare_socket, proxy (see MirroredHandshake).
    """
    return MirroredHandshake(target, plan, **options).perform()


def _upstream_error(error: CurlError, proxy: UpstreamProxy | None) -> UpstreamError:
    code = int(getattr(error, "code", 0) or 0)
    message = str(error).split(". See https://curl.se", 1)[0].replace("Failed to perform, ", "")
    stage = _STAGES.get(code, "upstream-connect")
    if proxy is not None:
        message = proxy.redact(message)
        if code in _PROXY_CODES or (code in (5, 7) and "proxy" in message.lower()):
            stage = "upstream-proxy"
        message = f"{message} (via {proxy.display})"
    return UpstreamError(message, stage)

