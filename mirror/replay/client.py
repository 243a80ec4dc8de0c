"""ReplayClient: the handshake state machine of the replay engine, sans I/O.

    client = ReplayClient(ReplayConfig(client_hello=raw, trust=cas, server_name="example.com"))
    sock.sendall(client.start())
    events = client.receive(sock.recv(65536))   # HandshakeComplete, ApplicationData, Closed
    count, events = client.receive_into(data, buffer)  # application data into buffer[:count]
    sock.sendall(client.data_to_send())          # Finished, KeyUpdate answers, alerts
    sock.sendall(client.send(b"GET / ...", record_sizes=[...]))
    sock.sendall(client.send_into(buffer, data))  # the same, sealed into a reused buffer
    sock.sendall(client.close())

TLS 1.3 (every group of :mod:`mirror.replay.groups`, the five RFC 8446 suites, HRR, certificate
compression, record_size_limit, middlebox-compat CCS when the client's session id is non-empty,
NewSessionTicket ignored, KeyUpdate answered) and TLS 1.2 with ECDHE and AEAD suites. A server
that picks a TLS 1.2 suite outside those (CBC, RSA key exchange, DHE) gets ``ReplayError`` reason
``needs-boringssl``. Every other refusal is a ``ReplayError`` too (see
:mod:`mirror.replay.errors`); after one, ``data_to_send()`` holds the alert for the server and
the client is finished.

Policies: ``chain_policy(chain, offered_groups)`` and ``choice_policy(hello, version, cipher)``
are called with the verified chain and with the server's choice; either refuses by raising or
by returning a non-empty string (the reason). The chain is verified against ``trust`` for
``server_name`` (default: the hello's SNI) unless ``insecure=True`` is passed explicitly; a
chain that verified before is taken from ``chain_cache`` (see
:class:`~mirror.verified_chains.VerifiedChains`), while the CertificateVerify signature and the
Finished are checked on every handshake.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.x509.verification import Store

from mirror.replay import messages as m
from mirror.replay.errors import ReplayError
from mirror.replay.groups import (
    X448,
    X25519,
    group_name,
    natural_length,
    new_share,
    shared_secret,
)
from mirror.replay.hello import ReplayHello, retry_hello, rewrite_hello
from mirror.replay.keyschedule import (
    TLS12_SUITES,
    TLS13_SUITES,
    KeySchedule,
    Suite,
    prf12,
)
from mirror.replay.records import (
    ALERT,
    APPLICATION_DATA,
    CHANGE_CIPHER_SPEC,
    HANDSHAKE,
    MAX_PLAINTEXT,
    RecordReader,
    Tls12Protection,
    Tls13Protection,
)
from mirror.replay.verify import (
    SHARED_CHAINS,
    TLS13_CONTEXT,
    server_chain,
    verify_delegated_credential,
    verify_signature,
)
from mirror.verified_chains import VerifiedChains
from mirror.wire import tls as t

TLS12, TLS13 = 0x0303, 0x0304
_HASH_NEW = {"sha256": hashlib.sha256, "sha384": hashlib.sha384}
DOWNGRADE_12, DOWNGRADE_11 = b"DOWNGRD\x01", b"DOWNGRD\x00"
CCS_RECORD = bytes.fromhex("140303000101")
# Extensions a server may put in EncryptedExtensions, when the client offered them.
EE_ALLOWED = {0, 1, 10, 14, 15, 16, 19, 20, 28, 57, 17513, 17613, 65037}
TLS12_SH_FORBIDDEN = {t.EXT_KEY_SHARE, t.EXT_SUPPORTED_VERSIONS, t.EXT_PRE_SHARED_KEY,
                      t.EXT_EARLY_DATA, t.EXT_COOKIE, t.EXT_PSK_KEY_EXCHANGE_MODES}
TLS12_GROUPS = {X25519, X448, 0x0017, 0x0018, 0x0019}
ALERT_NAMES = {0: "close_notify", 10: "unexpected_message", 20: "bad_record_mac",
               22: "record_overflow", 40: "handshake_failure", 42: "bad_certificate",
               43: "unsupported_certificate", 44: "certificate_revoked",
               45: "certificate_expired", 46: "certificate_unknown", 47: "illegal_parameter",
               48: "unknown_ca", 49: "access_denied", 50: "decode_error", 51: "decrypt_error",
               70: "protocol_version", 71: "insufficient_security", 80: "internal_error",
               86: "inappropriate_fallback", 90: "user_canceled", 100: "no_renegotiation",
               109: "missing_extension", 110: "unsupported_extension",
               112: "unrecognized_name", 116: "certificate_required",
               120: "no_application_protocol"}


@dataclass(slots=True)
class ReplayConfig:
    """What the engine needs: the client's hello and how to judge the server."""

    client_hello: t.ClientHello | bytes
    trust: list[x509.Certificate] | Store = field(default_factory=list)  # Store: load_trust()
    server_name: str | None = None
    now: datetime | None = None
    insecure: bool = False
    chain_policy: Callable[[list[x509.Certificate], list[int]], object] | None = None
    choice_policy: Callable[[t.ClientHello, int, int], object] | None = None
    alps_settings: bytes = b""
    max_key_updates: int = 32
    max_certificate: int = m.MAX_CERTIFICATE
    # Chains that verified before (same bytes, name, trust; within validity and a TTL) are not
    # verified again; None verifies every time. Signatures and Finished are always checked.
    chain_cache: VerifiedChains | None = SHARED_CHAINS


@dataclass(slots=True)
class HandshakeComplete:
    version: int
    cipher: int
    cipher_name: str
    group: int
    alpn: str | None
    peer_chain: list[x509.Certificate]
    ocsp_response: bytes | None = None  # the stapled OCSP response, unverified, if any


@dataclass(slots=True)
class ApplicationData:
    data: bytes


@dataclass(slots=True)
class Closed:
    clean: bool  # True after the server's close_notify, False on a bare end of stream


Event = HandshakeComplete | ApplicationData | Closed


def _fail(reason: str, message: str, alert: int | None = 47) -> ReplayError:
    return ReplayError(reason, message, alert=alert)


def _handshake(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + len(body).to_bytes(3, "big") + body


def _offered_alpn(hello: t.ClientHello, data: bytes) -> str:
    r = m.Reader(data, "ALPN")
    names = m.Reader(r.vec(2), "ALPN list")
    r.done()
    name = names.vec(1, 1)
    if names.left():
        raise _fail("alpn", "the server chose more than one ALPN protocol")
    if name not in hello.alpn_raw:
        raise _fail("alpn", f"the server chose ALPN {name!r}, not offered", 120)
    return name.decode("latin-1")


class ReplayClient:
    """One upstream TLS connection whose ClientHello is the client's own (see module doc)."""

    def __init__(self, config: ReplayConfig) -> None:
        self.config = config
        self.first: ReplayHello = rewrite_hello(config.client_hello)
        self.hello = self.first.hello
        self.hellos_sent: list[bytes] = []
        self.server_name = config.server_name or self.hello.sni
        self._offered = set(self.hello.extension_types)
        self._reader = RecordReader()
        self._hs = m.HandshakeBuffer()
        self._out = bytearray()
        self._state = "start"
        self._read: Tls13Protection | Tls12Protection | None = None
        self._write: Tls13Protection | Tls12Protection | None = None
        self._suite: Suite  # the server's choice, set from its ServerHello on
        self._transcript = hashlib.sha256()  # replaced once the suite's hash is known
        self._ch1 = b""
        self._hrr_suite: int | None = None
        self._shares: ReplayHello = self.first  # the hello whose key shares are in play
        self._ccs_sent = False
        self._ccs_seen = 0
        self._version = 0
        self._alpn: str | None = None
        self._chain: list[x509.Certificate] = []
        self._cert_request: bytes | None = None
        self._client_ee = 0  # the ALPS codepoint the server answered, 0 for none
        self._send_limit = MAX_PLAINTEXT
        self._read_limit = MAX_PLAINTEXT
        self._key_updates = 0
        self._post_messages = 0
        self._group = 0
        self._error: ReplayError | None = None
        self._ocsp: bytes | None = None
        # TLS 1.2
        self._ems = False
        self._status_expected = False
        self._ticket_expected = False
        self._pms = b""
        self._ms = b""

    # ---- public API -------------------------------------------------------------------------

    def start(self) -> bytes:
        """The first flight: the replayed ClientHello in the client's own record split."""
        if self._state != "start":
            raise _fail("unexpected-message", "start() called twice", 80)
        self._ch1 = self.first.message
        self.hellos_sent.append(self.first.message)
        self._state = "server_hello"
        return self.first.records()

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def connected(self) -> bool:
        return self._state == "connected"

    def receive(self, data: bytes) -> list[Event]:
        """Feed bytes from the server; returns what happened. Raises ReplayError on refusal."""
        return self.receive_into(data, None)[1]

    def receive_into(self, data: bytes,
                     buffer: memoryview | None) -> tuple[int, list[Event]]:
        """``receive``, with the application data decrypted straight into ``buffer`` as far as
        whole records fit: (bytes written at the start of ``buffer``, events). What does not
        fit comes as ``ApplicationData`` events, which follow what is in ``buffer``."""
        if self._error is not None:
            raise self._error
        if self._state in ("start", "closed"):
            raise _fail("closed", "no connection to receive on", 80)
        events: list[Event] = []
        filled, room = 0, 0 if buffer is None else len(buffer)
        reader = self._reader
        reader.feed(data)
        next_record = reader.next
        # The common case, application data opened straight into ``buffer``, runs on locals;
        # anything else (and whatever follows it in this read) takes the full path, after
        # which the state is read again. ``opened``: application data since the KeyUpdate and
        # post-handshake counters were last reset (done before anything that counts).
        read = self._read
        fast = room > 0 and self._fast_path()
        opened = False
        try:
            while True:
                record = next_record(True)
                if record is None:
                    break
                kind, header, fragment = record
                if fast and kind == APPLICATION_DATA:
                    assert buffer is not None and read is not None
                    size = len(fragment) - read.tag_len
                    if 0 < size <= room - filled:
                        inner = buffer[filled:filled + size]
                        kind, size = read.open_into(header, fragment, inner)
                        if kind == APPLICATION_DATA:
                            filled += size
                            opened = True
                            continue
                        if opened:
                            self._key_updates = self._post_messages = 0
                            opened = False
                        self._content(kind, bytes(inner[:size]), events)
                        read, fast = self._read, room > 0 and not events and self._fast_path()
                        if self._state == "closed":
                            break
                        continue
                if opened:
                    self._key_updates = self._post_messages = 0
                    opened = False
                self._record(kind, header, fragment, events)
                read, fast = self._read, room > 0 and not events and self._fast_path()
                if self._state == "closed":
                    break
        except ReplayError as error:
            self._abort(error)
            raise
        finally:
            if opened:
                self._key_updates = self._post_messages = 0
        return filled, events

    def _fast_path(self) -> bool:
        """Whether application data may be opened straight into the caller's buffer."""
        return self._state == "connected" and not self._hs.pending and self._read is not None

    def eof(self) -> list[Event]:
        """The server closed the stream."""
        if self._error is not None:
            raise self._error
        if self._state == "closed":
            return []
        if self._state != "connected" or self._reader.pending or self._hs.pending:
            error = _fail("truncated", "the server closed the connection in the middle of "
                          + ("a record" if self._reader.pending else "the handshake"), None)
            self._abort(error)
            raise error
        self._state = "closed"
        return [Closed(clean=False)]

    def send(self, data: bytes | memoryview,
             record_sizes: list[int] | None = None) -> bytearray:
        """Application data as records (plaintext lengths from ``record_sizes`` when given),
        sealed into one new buffer."""
        write, cuts, size = self._records_for(data, record_sizes)
        out = bytearray(size)
        with memoryview(data) as view, memoryview(out) as target:
            write.seal_records(APPLICATION_DATA, view, cuts, target)
        return out

    def send_into(self, buffer: bytearray, data: bytes | memoryview,
                  record_sizes: list[int] | None = None) -> memoryview:
        """``send`` with the records sealed into ``buffer`` (grown when it is too small, so no
        view of it may be held): a view of them at its start, valid until ``buffer`` is used
        again. A caller that writes them out at once reuses one buffer rather than allocating
        (and zeroing) one per write."""
        write, cuts, size = self._records_for(data, record_sizes)
        if len(buffer) < size:
            buffer += bytes(size - len(buffer))
        out = memoryview(buffer)[:size]
        with memoryview(data) as view:
            write.seal_records(APPLICATION_DATA, view, cuts, out)
        return out

    def _records_for(self, data: bytes | memoryview, record_sizes: list[int] | None
                     ) -> tuple[Tls13Protection | Tls12Protection, list[int], int]:
        """The write protection, the plaintext length of each record for ``data`` (the
        client's ``record_sizes`` as far as they go and the limit allows, then full records)
        and the length of them all sealed."""
        if self._state != "connected":
            raise _fail("closed", "cannot send before the handshake or after close", 80)
        write = self._write
        assert write is not None
        end, limit = len(data), self._send_limit
        cuts: list[int] = []
        pos = 0
        if record_sizes:
            for size in record_sizes:
                if pos >= end:
                    break
                size = 1 if size < 1 else limit if size > limit else size
                if size > end - pos:
                    size = end - pos
                cuts.append(size)
                pos += size
        if pos < end:
            whole, rest = divmod(end - pos, limit)
            cuts += [limit] * whole
            if rest:
                cuts.append(rest)
        return write, cuts, end + write.overhead * len(cuts)

    def close(self) -> bytes:
        """A close_notify for the server; the client is finished afterwards."""
        if self._state != "connected":
            self._state = "closed"
            return b""
        self._state = "closed"
        return self._seal(ALERT, b"\x01\x00")

    # ---- records ------------------------------------------------------------------------------

    def _seal(self, kind: int, data: bytes) -> bytes:
        if self._write is None:
            return struct.pack("!BHH", kind, TLS12, len(data)) + data
        return self._write.seal(kind, data)

    def _send_handshake(self, message: bytes) -> None:
        for pos in range(0, len(message), MAX_PLAINTEXT):
            self._out += self._seal(HANDSHAKE, message[pos:pos + MAX_PLAINTEXT])

    def _abort(self, error: ReplayError) -> None:
        self._error = error
        if error.alert is not None and self._state not in ("closed", "start"):
            self._out += self._seal(ALERT, bytes([2, error.alert]))
        self._state = "closed"

    def _record(self, kind: int, header: bytes, fragment: bytes | memoryview,
                events: list[Event]) -> None:
        if kind == CHANGE_CIPHER_SPEC:
            self._change_cipher_spec(fragment)
            return
        if self._read is not None and (self._version == TLS12 or kind == APPLICATION_DATA):
            kind, fragment = self._read.open(header, fragment)
            if kind == APPLICATION_DATA and self._state == "connected" and not self._hs.pending:
                self._key_updates = self._post_messages = 0  # the common case, in short
                if fragment:
                    events.append(ApplicationData(fragment))
                return
        elif self._read is not None and kind != ALERT:
            raise _fail("unexpected-message", f"unprotected record of type {kind} after "
                        "the keys changed", 10)
        elif len(fragment) > MAX_PLAINTEXT:
            raise ReplayError("record-overflow", f"plaintext record of {len(fragment)} bytes",
                              alert=22)
        self._content(kind, fragment, events)

    def _content(self, kind: int, fragment: bytes | memoryview, events: list[Event]) -> None:
        """A record's content once opened (or a plaintext one before the keys change)."""
        if kind == HANDSHAKE:
            if not fragment:
                raise _fail("decode", "empty handshake record", 50)
            self._hs.feed(fragment)
            while self._state != "closed":
                message = self._hs.next()
                if message is None:
                    break
                self._message(*message, events)
        elif self._hs.pending:
            raise _fail("unexpected-message", "a handshake message is interleaved with "
                        "another record type", 10)
        elif kind == ALERT:
            self._alert(fragment, events)
        elif kind == APPLICATION_DATA:
            if self._state != "connected":
                raise _fail("unexpected-message", "application data before the handshake "
                            "completed", 10)
            self._key_updates = self._post_messages = 0
            if fragment:  # opened by now, so bytes (bytes() returns it as is)
                events.append(ApplicationData(bytes(fragment)))
        else:
            raise _fail("unexpected-message", f"record of content type {kind}", 10)

    def _change_cipher_spec(self, fragment: bytes | memoryview) -> None:
        if fragment != b"\x01":
            raise _fail("decode", "ChangeCipherSpec is not the single byte 1", 10)
        if self._version == TLS12:
            if self._state != "server_ccs" or self._hs.pending:
                raise _fail("unexpected-message", "ChangeCipherSpec out of order", 10)
            self._read = self._pending_read
            self._state = "finished12"
            return
        # TLS 1.3 middlebox compatibility: ignored between the first server flight and Finished.
        self._ccs_seen += 1
        if self._state not in ("server_hello2", "encrypted_extensions", "certificate",
                               "certificate_verify", "finished") or self._ccs_seen > 2:
            raise _fail("unexpected-message", "ChangeCipherSpec out of order", 10)

    def _alert(self, fragment: bytes | memoryview, events: list[Event]) -> None:
        if len(fragment) != 2:
            raise _fail("decode", "alert record of the wrong size", 50)
        level, description = fragment
        name = ALERT_NAMES.get(description, str(description))
        if description == 0:
            if self._state != "connected":
                raise _fail("alert", "the server closed (close_notify) during the handshake",
                            None)
            self._state = "closed"
            events.append(Closed(clean=True))
            return
        if self._version == TLS12 and level == 1 and description in (90, 100):
            return  # warnings a TLS 1.2 peer may send and go on
        if description == 90 and self._version == TLS13:
            return
        raise ReplayError("alert", f"the server sent alert {name} ({description})"
                          + (" during the handshake" if self._state != "connected" else ""))

    # ---- handshake messages -----------------------------------------------------------------

    def _hash(self) -> bytes:
        return self._transcript.copy().digest()

    def _add(self, raw: bytes) -> None:
        self._transcript.update(raw)

    def _message(self, kind: int, body: bytes, raw: bytes, events: list[Event]) -> None:
        state = self._state
        if state in ("server_hello", "server_hello2"):
            if kind != m.SERVER_HELLO:
                raise _fail("unexpected-message", f"handshake message {kind} where a "
                            "ServerHello was expected", 10)
            self._server_hello(body, raw)
        elif self._version == TLS13:
            self._message13(kind, body, raw, events)
        else:
            self._message12(kind, body, raw, events)

    def _policy(self, hook, *args) -> None:
        if hook is None:
            return
        try:
            verdict = hook(*args)
        except ReplayError:
            raise
        except Exception as error:  # noqa: BLE001 - the caller's policy refused, in its words
            raise _fail("policy", str(error) or type(error).__name__, 71) from None
        if isinstance(verdict, str) and verdict:
            raise _fail("policy", verdict, 71)

    def _server_hello(self, body: bytes, raw: bytes) -> None:
        sh = m.parse_server_hello(body)
        hello = self.hello
        offered_versions = hello.supported_versions
        sv = sh.ext(t.EXT_SUPPORTED_VERSIONS)
        if sh.compression != 0:
            raise _fail("decode", f"the server chose compression method {sh.compression}")
        if sh.cipher_suite not in hello.cipher_suites or t.is_grease(sh.cipher_suite):
            raise _fail("cipher-not-offered", f"the server chose cipher suite "
                        f"{sh.cipher_suite:#06x}, which the client did not offer")
        if sv is not None:
            if len(sv) != 2 or int.from_bytes(sv, "big") not in offered_versions:
                raise _fail("version", f"the server chose version {sv.hex()}, not offered", 70)
            if int.from_bytes(sv, "big") != TLS13:
                raise _fail("version", f"supported_versions {sv.hex()} in a ServerHello", 70)
            self._server_hello13(sh, raw)
            return
        if sh.is_hrr:
            raise _fail("version", "a HelloRetryRequest without supported_versions", 70)
        if self._state == "server_hello2":
            raise _fail("version", "a TLS 1.2 ServerHello after a HelloRetryRequest", 70)
        version = sh.legacy_version
        if offered_versions:
            offered = version in offered_versions
        else:
            offered = TLS12 >= version >= 0x0301 and version <= hello.legacy_version
        if TLS13 in offered_versions and sh.random[-8:] in (DOWNGRADE_12, DOWNGRADE_11):
            raise _fail("downgrade", "the server's random carries the TLS 1.3 downgrade "
                        "sentinel while the client offered TLS 1.3", 47)
        if not offered:
            raise _fail("version", f"the server chose version {version:#06x}, not offered", 70)
        if version != TLS12:
            raise _fail("version", f"the server chose {version:#06x}; this engine speaks TLS "
                        "1.2 and 1.3 only", 70)
        self._server_hello12(sh, raw)

    # ---- TLS 1.3 ------------------------------------------------------------------------------

    def _server_hello13(self, sh: m.ServerHello, raw: bytes) -> None:
        hello = self.hello
        suite = TLS13_SUITES.get(sh.cipher_suite)
        if suite is None:
            raise _fail("cipher-not-offered", f"cipher suite {sh.cipher_suite:#06x} is not a "
                        "TLS 1.3 suite")
        if sh.session_id != hello.session_id or sh.legacy_version != TLS12:
            raise _fail("decode", "the server did not echo the session id, or its "
                        "legacy_version is not TLS 1.2")
        self._version = TLS13
        if sh.is_hrr:
            self._hello_retry(sh, suite, raw)
            return
        if self._hrr_suite is not None and sh.cipher_suite != self._hrr_suite:
            raise _fail("cipher-not-offered", "the ServerHello's suite differs from the "
                        "HelloRetryRequest's")
        for kind, _ in sh.extensions:
            if kind not in (t.EXT_SUPPORTED_VERSIONS, t.EXT_KEY_SHARE):
                raise _fail("unsolicited-extension", f"ServerHello extension {kind} "
                            "(the client offered no PSK)", 110)
        data = sh.ext(t.EXT_KEY_SHARE)
        if data is None:
            raise _fail("decode", "a TLS 1.3 ServerHello without key_share", 109)
        r = m.Reader(data, "key_share")
        group = r.uint(2)
        peer = r.vec(2, 1)
        r.done()
        share = self._shares.share_for(group)
        if share is None and any(s.group == group and not t.is_grease(group)
                                 for s in self._shares.shares):
            raise _fail("unsupported", f"the server chose group {group_name(group)}, offered as "
                        "the client offered it but not computable by this engine", 40)
        if share is None:
            raise _fail("group-not-offered", f"the server chose group {group_name(group)}, "
                        "for which the client sent no key share")
        self._policy(self.config.choice_policy, self.first.original, TLS13, sh.cipher_suite)
        secret = shared_secret(share, peer)
        self._group = group
        self._suite = suite
        if self._hrr_suite is None:
            self._transcript = _HASH_NEW[suite.hash_name](self._ch1)
        self._add(raw)
        self._schedule = KeySchedule(suite)
        self._c_hs, self._s_hs = self._schedule.handshake(secret, self._hash())
        self._key_change()
        self._read = Tls13Protection(suite, *self._schedule.traffic_keys(self._s_hs))
        self._read.max_plaintext = self._read_limit
        self._reader.max_fragment = MAX_PLAINTEXT + 256
        self._state = "encrypted_extensions"

    def _key_change(self) -> None:
        if self._hs.pending:
            raise _fail("unexpected-message", "a handshake message spans a key change", 10)

    def _hello_retry(self, sh: m.ServerHello, suite: Suite, raw: bytes) -> None:
        if self._state == "server_hello2":
            raise _fail("second-hrr", "the server sent a second HelloRetryRequest", 10)
        group = cookie = None
        for kind, data in sh.extensions:
            if kind == t.EXT_KEY_SHARE:
                if len(data) != 2:
                    raise _fail("decode", "HelloRetryRequest key_share is not one group", 50)
                group = int.from_bytes(data, "big")
            elif kind == t.EXT_COOKIE:
                r = m.Reader(data, "cookie")
                cookie = r.vec(2, 1)
                r.done()
            elif kind != t.EXT_SUPPORTED_VERSIONS:
                raise _fail("unsolicited-extension", f"HelloRetryRequest extension {kind}", 110)
        if group is not None:
            if group not in self.hello.supported_groups or t.is_grease(group):
                raise _fail("group-not-offered", f"HelloRetryRequest asks for group "
                            f"{group_name(group)}, which the client did not offer")
            if any(s.group == group for s in self.first.shares):
                raise _fail("group-not-offered", f"HelloRetryRequest asks for group "
                            f"{group_name(group)}, for which the client already sent a share")
            if natural_length(group) is None:
                raise _fail("unsupported", f"HelloRetryRequest asks for group "
                            f"{group_name(group)}, which this engine cannot compute", 40)
        elif cookie is None:
            raise _fail("decode", "a HelloRetryRequest that changes nothing")
        self._hrr_suite, self._suite = sh.cipher_suite, suite
        new = _HASH_NEW[suite.hash_name]
        self._transcript = new(_handshake(m.MESSAGE_HASH, new(self._ch1).digest()))
        self._add(raw)
        second = retry_hello(self.first, group, cookie)
        self._shares = second
        self._add(second.message)
        self.hellos_sent.append(second.message)
        if self.hello.session_id and not self._ccs_sent:
            self._out += CCS_RECORD
            self._ccs_sent = True
        self._out += second.records()
        self._state = "server_hello2"

    def _message13(self, kind: int, body: bytes, raw: bytes, events: list[Event]) -> None:
        state = self._state
        if state == "encrypted_extensions" and kind == m.ENCRYPTED_EXTENSIONS:
            self._encrypted_extensions(body)
            self._state = "certificate"
        elif state == "certificate" and kind == m.CERTIFICATE_REQUEST and \
                self._cert_request is None:
            self._cert_request, _ = m.parse_certificate_request13(body)
        elif state == "certificate" and kind in (m.CERTIFICATE, m.COMPRESSED_CERTIFICATE):
            self._certificate13(kind, body)
            self._state = "certificate_verify"
        elif state == "certificate_verify" and kind == m.CERTIFICATE_VERIFY:
            cv = m.parse_certificate_verify(body)
            verify_signature(self._cv_key, cv.scheme, cv.signature,
                             TLS13_CONTEXT + self._hash(), offered=self._cv_schemes, tls13=True)
            self._state = "finished"
        elif state == "finished" and kind == m.FINISHED:
            self._finished13(body, raw, events)
            return
        elif state == "connected":
            self._post_handshake(kind, body, raw)
            return
        else:
            raise _fail("unexpected-message", f"handshake message {kind} in state {state}", 10)
        self._add(raw)

    def _encrypted_extensions(self, body: bytes) -> None:
        r = m.Reader(body, "EncryptedExtensions")
        extensions = m.parse_extensions(r.vec(2), "EncryptedExtensions")
        r.done()
        for kind, data in extensions:
            if kind not in self._offered:
                raise _fail("unsolicited-extension", f"EncryptedExtensions carries extension "
                            f"{kind} ({t.EXTENSION_NAMES.get(kind, 'unknown')}), which the "
                            "client did not offer", 110)
            if kind not in EE_ALLOWED:
                raise _fail("unsolicited-extension", f"extension {kind} is not allowed in "
                            "EncryptedExtensions", 47)
            if kind == t.EXT_ALPN:
                self._alpn = _offered_alpn(self.hello, data)
            elif kind == t.EXT_RECORD_SIZE_LIMIT:
                self._record_size_limit(data, tls13=True)
            elif kind == t.EXT_MAX_FRAGMENT_LENGTH:
                self._max_fragment(data)
            elif kind in (t.EXT_ALPS, t.EXT_ALPS_OLD):
                self._client_ee = kind
        if self._client_ee and self._alpn is None:
            raise _fail("decode", "ALPS without ALPN")

    def _record_size_limit(self, data: bytes, *, tls13: bool) -> None:
        if len(data) != 2 or int.from_bytes(data, "big") < 64:
            raise _fail("decode", "record_size_limit below 64 or malformed")
        limit = int.from_bytes(data, "big") - (1 if tls13 else 0)
        self._send_limit = min(MAX_PLAINTEXT, limit)
        mine = self.hello.record_size_limit
        if mine is not None:
            self._read_limit = min(MAX_PLAINTEXT, mine - (1 if tls13 else 0))
            if self._read is not None:
                self._read.max_plaintext = self._read_limit
        self._rsl = True

    def _max_fragment(self, data: bytes) -> None:
        if getattr(self, "_rsl", False):
            return
        mine = self.hello.ext(t.EXT_MAX_FRAGMENT_LENGTH)
        if mine is None or data != mine.data or data[:1] not in (b"\1", b"\2", b"\3", b"\4"):
            raise _fail("decode", "max_fragment_length differs from the client's")
        self._send_limit = self._read_limit = 1 << (8 + data[0])
        if self._read is not None:
            self._read.max_plaintext = self._read_limit

    def _certificate13(self, kind: int, body: bytes) -> None:
        if kind == m.COMPRESSED_CERTIFICATE:
            compressed = m.parse_compressed_certificate(body)
            if compressed.algorithm not in self.hello.compress_certificate:
                raise _fail("unsolicited-extension", f"certificate compressed with algorithm "
                            f"{compressed.algorithm}, which the client did not offer")
            body = m.decompress_certificate(compressed, self.config.max_certificate)
        message = m.parse_certificate13(body)
        if message.context:
            raise _fail("decode", "the server's Certificate has a request context")
        credential = None
        for index, entry in enumerate(message.entries):
            for ext_kind, data in entry.extensions:
                if ext_kind not in self._offered or ext_kind not in (
                        t.EXT_STATUS_REQUEST, t.EXT_SIGNED_CERTIFICATE_TIMESTAMP,
                        t.EXT_DELEGATED_CREDENTIALS) or (
                        ext_kind == t.EXT_DELEGATED_CREDENTIALS and index):
                    raise _fail("unsolicited-extension", f"certificate entry extension "
                                f"{ext_kind}, which the client did not offer", 110)
                if ext_kind == t.EXT_DELEGATED_CREDENTIALS:
                    credential = data
                elif ext_kind == t.EXT_STATUS_REQUEST and not index:
                    self._ocsp = m.parse_certificate_status(data)
        self._verify_chain([entry.der for entry in message.entries])
        if credential is not None:
            key, scheme = verify_delegated_credential(
                credential, self._leaf, dc_schemes=self.hello.delegated_credentials,
                signature_schemes=self.hello.signature_algorithms, now=self.config.now)
            self._cv_key = key
            self._cv_schemes: Sequence[int] = (scheme,)

    def _verify_chain(self, ders: list[bytes]) -> None:
        config = self.config
        self._chain = server_chain(ders, trust=config.trust, server_name=self.server_name,
                                   now=config.now, insecure=config.insecure,
                                   cache=config.chain_cache)
        self._leaf = self._chain[0]
        self._cv_key, self._cv_schemes = self._leaf.public_key(), self.hello.signature_algorithms
        self._policy(self.config.chain_policy, self._chain, self.hello.supported_groups)

    def _finished13(self, body: bytes, raw: bytes, events: list[Event]) -> None:
        schedule = self._schedule
        expected = schedule.finished(self._s_hs, self._hash())
        if not hmac.compare_digest(expected, body):
            raise _fail("bad-finished", "the server's Finished does not match the transcript", 51)
        self._add(raw)
        self._key_change()
        self._c_ap, self._s_ap = schedule.application(self._hash())
        self._read = Tls13Protection(self._suite, *schedule.traffic_keys(self._s_ap))
        self._read.max_plaintext = self._read_limit
        if self.hello.session_id and not self._ccs_sent:
            self._out += CCS_RECORD
            self._ccs_sent = True
        self._write = Tls13Protection(self._suite, *schedule.traffic_keys(self._c_hs))
        if self._client_ee:
            ext = struct.pack("!HH", self._client_ee, len(self.config.alps_settings))
            message = _handshake(m.ENCRYPTED_EXTENSIONS, struct.pack("!H", len(ext) + len(
                self.config.alps_settings)) + ext + self.config.alps_settings)
            self._add(message)
            self._send_handshake(message)
        if self._cert_request is not None:
            message = _handshake(m.CERTIFICATE, bytes([len(self._cert_request)])
                                 + self._cert_request + b"\0\0\0")
            self._add(message)
            self._send_handshake(message)
        finished = _handshake(m.FINISHED, schedule.finished(self._c_hs, self._hash()))
        self._add(finished)
        self._send_handshake(finished)
        self._write = Tls13Protection(self._suite, *schedule.traffic_keys(self._c_ap))
        self._state = "connected"
        events.append(HandshakeComplete(TLS13, self._suite.code, self._suite.name, self._group,
                                        self._alpn, self._chain, self._ocsp))

    def _post_handshake(self, kind: int, body: bytes, raw: bytes) -> None:
        self._post_messages += 1
        if self._post_messages > 4 * self.config.max_key_updates:
            raise _fail("keyupdate-flood", "too many post-handshake messages without data", 10)
        if kind == m.NEW_SESSION_TICKET:
            m.parse_new_session_ticket13(body)
        elif kind == m.KEY_UPDATE:
            requested = m.parse_key_update(body)
            self._key_updates += 1
            if self._key_updates > self.config.max_key_updates:
                raise _fail("keyupdate-flood", f"more than {self.config.max_key_updates} "
                            "KeyUpdates without application data", 10)
            self._key_change()
            self._s_ap = self._schedule.next_secret(self._s_ap)
            self._read = Tls13Protection(self._suite, *self._schedule.traffic_keys(self._s_ap))
            self._read.max_plaintext = self._read_limit
            if requested:
                self._send_handshake(_handshake(m.KEY_UPDATE, b"\0"))
                self._c_ap = self._schedule.next_secret(self._c_ap)
                self._write = Tls13Protection(self._suite,
                                              *self._schedule.traffic_keys(self._c_ap))
        elif kind == m.CERTIFICATE_REQUEST and t.EXT_POST_HANDSHAKE_AUTH in self._offered:
            context, _ = m.parse_certificate_request13(body)
            transcript = self._transcript.copy()
            transcript.update(raw)
            certificate = _handshake(m.CERTIFICATE, bytes([len(context)]) + context + b"\0\0\0")
            transcript.update(certificate)
            finished = _handshake(m.FINISHED, self._schedule.finished(self._c_ap,
                                                                      transcript.digest()))
            self._send_handshake(certificate + finished)
        else:
            raise _fail("unexpected-message", f"post-handshake message {kind}", 10)

    # ---- TLS 1.2 ------------------------------------------------------------------------------

    def _server_hello12(self, sh: m.ServerHello, raw: bytes) -> None:
        hello = self.hello
        code = sh.cipher_suite
        if code in TLS13_SUITES:
            raise _fail("cipher-not-offered", f"TLS 1.3 suite {code:#06x} in a TLS 1.2 "
                        "ServerHello")
        suite = TLS12_SUITES.get(code)
        if suite is None:
            raise _fail("needs-boringssl", f"the server chose TLS 1.2 suite {code:#06x} (CBC, "
                        "RSA key exchange or DHE), which this engine leaves to BoringSSL", 40)
        if sh.session_id and sh.session_id == hello.session_id:
            raise _fail("renegotiation", "the server resumed a session the engine never had")
        renegotiation = False
        offered = self._offered | ({t.EXT_RENEGOTIATION_INFO} if 0x00FF in hello.cipher_suites
                                   else set())
        for kind, data in sh.extensions:
            if kind not in offered or kind in TLS12_SH_FORBIDDEN:
                raise _fail("unsolicited-extension", f"ServerHello extension {kind} "
                            f"({t.EXTENSION_NAMES.get(kind, 'unknown')}), which the client "
                            "did not offer", 110)
            if kind == t.EXT_RENEGOTIATION_INFO:
                if data != b"\x00":
                    raise _fail("renegotiation", "renegotiation_info is not empty", 40)
                renegotiation = True
            elif kind == t.EXT_EXTENDED_MASTER_SECRET:
                if data:
                    raise _fail("decode", "extended_master_secret is not empty")
                self._ems = True
            elif kind == t.EXT_ALPN:
                self._alpn = _offered_alpn(hello, data)
            elif kind == t.EXT_STATUS_REQUEST:
                self._status_expected = True
            elif kind == t.EXT_SESSION_TICKET:
                self._ticket_expected = True
            elif kind == t.EXT_RECORD_SIZE_LIMIT:
                self._record_size_limit(data, tls13=False)
            elif kind == t.EXT_MAX_FRAGMENT_LENGTH:
                self._max_fragment(data)
            elif kind == t.EXT_EC_POINT_FORMATS and 0 not in data[1:]:
                raise _fail("decode", "the server's ec_point_formats lack uncompressed")
        offered_renegotiation = (t.EXT_RENEGOTIATION_INFO in self._offered
                                 or 0x00FF in hello.cipher_suites)
        if offered_renegotiation and not renegotiation:
            raise _fail("renegotiation", "the server does not support secure renegotiation "
                        "(RFC 5746)", 40)
        self._policy(self.config.choice_policy, self.first.original, TLS12, code)
        self._version, self._suite = TLS12, suite
        self._server_random = sh.random
        self._transcript = _HASH_NEW[suite.hash_name](self._ch1)
        self._add(raw)
        self._state = "certificate12"

    def _message12(self, kind: int, body: bytes, raw: bytes, events: list[Event]) -> None:
        state = self._state
        if state == "certificate12" and kind == m.CERTIFICATE:
            self._verify_chain([e.der for e in m.parse_certificate12(body).entries])
            self._state = "status12" if self._status_expected else "key_exchange12"
        elif state == "status12" and kind == m.CERTIFICATE_STATUS:
            self._ocsp = m.parse_certificate_status(body)
            self._state = "key_exchange12"
        elif state in ("status12", "key_exchange12") and kind == m.SERVER_KEY_EXCHANGE:
            self._server_key_exchange(body)
            self._state = "hello_done12"
        elif state == "hello_done12" and kind == m.CERTIFICATE_REQUEST and \
                self._cert_request is None:
            m.parse_certificate_request12(body)
            self._cert_request = b""
        elif state == "hello_done12" and kind == m.SERVER_HELLO_DONE:
            if body:
                raise _fail("decode", "ServerHelloDone is not empty", 50)
            self._add(raw)
            self._client_flight12()
            return
        elif state == "server_ccs" and kind == m.NEW_SESSION_TICKET and self._ticket_expected:
            m.parse_new_session_ticket12(body)
            self._ticket_expected = False
        elif state == "finished12" and kind == m.FINISHED:
            expected = prf12(self._suite.hash_name, self._ms, b"server finished",
                             self._hash(), 12)
            if not hmac.compare_digest(expected, body):
                raise _fail("bad-finished", "the server's Finished does not match the "
                            "transcript", 51)
            self._state = "connected"
            events.append(HandshakeComplete(TLS12, self._suite.code, self._suite.name,
                                            self._group, self._alpn, self._chain, self._ocsp))
            return
        elif state == "connected" and kind == m.HELLO_REQUEST and not body:
            return  # no renegotiation: a client may ignore HelloRequest
        else:
            raise _fail("unexpected-message", f"handshake message {kind} in state {state}", 10)
        self._add(raw)

    def _server_key_exchange(self, body: bytes) -> None:
        ske = m.parse_server_key_exchange(body)
        if ske.group not in self.hello.supported_groups or ske.group not in TLS12_GROUPS:
            raise _fail("group-not-offered", f"ServerKeyExchange uses group "
                        f"{group_name(ske.group)}, which the client did not offer for TLS 1.2")
        leaf = self._leaf
        want = "ecdsa" if self._suite.tls12_kex == "ecdhe-ecdsa" else "rsa"
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        if not isinstance(leaf.public_key(), ec.EllipticCurvePublicKey if want == "ecdsa"
                          else rsa.RSAPublicKey):
            raise _fail("bad-signature", f"suite {self._suite.name} with a certificate that "
                        f"has no {want} key", 42)
        offered = self.hello.signature_algorithms or [0x0201, 0x0203]
        verify_signature(leaf.public_key(), ske.scheme, ske.signature,
                         self.hello.random + self._server_random + ske.params,
                         offered=offered, tls13=False)
        share = new_share(ske.group)
        self._pms = shared_secret(share, ske.public)
        self._group = ske.group
        self._ckx = _handshake(m.CLIENT_KEY_EXCHANGE, bytes([len(share.public)]) + share.public)

    def _client_flight12(self) -> None:
        suite = self._suite
        h = suite.hash_name
        if self._cert_request is not None:
            certificate = _handshake(m.CERTIFICATE, b"\0\0\0")
            self._add(certificate)
            self._send_handshake(certificate)
        self._add(self._ckx)
        self._send_handshake(self._ckx)
        if self._ems:
            self._ms = prf12(h, self._pms, b"extended master secret", self._hash(), 48)
        else:
            self._ms = prf12(h, self._pms, b"master secret",
                             self.hello.random + self._server_random, 48)
        k, iv = suite.key_len, suite.iv_len
        block = prf12(h, self._ms, b"key expansion", self._server_random + self.hello.random,
                      2 * k + 2 * iv)
        c_key, s_key = block[:k], block[k:2 * k]
        c_iv, s_iv = block[2 * k:2 * k + iv], block[2 * k + iv:]
        self._out += CCS_RECORD
        self._write = Tls12Protection(suite, c_key, c_iv)
        self._pending_read = Tls12Protection(suite, s_key, s_iv)
        self._pending_read.max_plaintext = self._read_limit
        finished = _handshake(m.FINISHED, prf12(h, self._ms, b"client finished",
                                                self._hash(), 12))
        self._add(finished)
        self._send_handshake(finished)
        self._state = "server_ccs"
