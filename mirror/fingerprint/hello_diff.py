"""Two ClientHellos compared field by field, after masking what a client makes fresh per connection.

``hello_differences(client, sent)`` says how the hello a proxy sent upstream (``sent``) differs
from the client's own (``client``), as a list of :class:`HelloDifference` (empty: the server
cannot tell them apart). ``hello_differences_of_bytes`` does the same from raw bytes: TLS
records or a bare handshake message (``01 len body``).

Compared: the record-layer version (when both are known), legacy_version, the session id's
length, the cipher list, the compression methods, the extension list in order, and each
extension's body (``extension:<name>``). Masked, because the client itself makes them fresh on
every connection, so one connection's values say nothing a server could hold against another's:

- ``random``; the ``legacy_session_id`` content (its length is compared);
- ``key_share`` key material: groups, order and key lengths are compared; a GREASE entry's key
  bytes are compared as sent;
- a GREASE (outer) ``encrypted_client_hello``: config id, ``enc`` and payload content (type, KDF,
  AEAD and both lengths are compared);
- GREASE values (RFC 8701): which of the sixteen values stands at a place is compared only as
  "a GREASE value": the stacks that send GREASE (BoringSSL, NSS) draw it per connection, so the
  value itself identifies nobody, while its places (which list, which position, which extension
  slot) and the GREASE extensions' bodies are the stack's signature and are compared;
- ``pre_shared_key`` and ``early_data`` missing upstream: a PSK resumes the client's session with
  its own server, never one the proxy has; the extensions present on both sides compare as
  present (their identities and binders are per-session secrets);
- ``session_ticket`` content: an empty ticket upstream where the client sent one is expected for
  the same reason (presence is compared).

Everything else is compared byte for byte: padding (its length included), unknown and private
extensions, SNI, ALPN, every list. Pure; raises only :class:`~mirror.wire.errors.WireError`
(from the parser) for bytes that are not a ClientHello.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from mirror.wire.errors import WireError
from mirror.wire.tls import (
    EXT_ALPN,
    EXT_EARLY_DATA,
    EXT_ENCRYPTED_CLIENT_HELLO,
    EXT_KEY_SHARE,
    EXT_PRE_SHARED_KEY,
    EXT_SESSION_TICKET,
    EXTENSION_NAMES,
    ClientHello,
    EchOuter,
    Extension,
    is_grease,
    is_grease_u8,
    parse_client_hello,
    read_client_hello,
)

GREASE_TEXT = "grease"
HANDSHAKE_CLIENT_HELLO = 1

# extensions whose body is a list of 16-bit values (u16 length prefix / u8 length prefix)
_U16_LISTS = frozenset({10, 13, 34, 50})
_U16_LISTS_SHORT = frozenset({27, 43})
_PSK_KEY_EXCHANGE_MODES = 45
_RESUMPTION_ONLY = (EXT_PRE_SHARED_KEY, EXT_EARLY_DATA)


@dataclass(slots=True, frozen=True)
class HelloDifference:
    """One field that differs: its name and both sides' masked values, as text."""

    field: str
    client: str
    sent: str

    def __str__(self) -> str:
        return f"{self.field}: client {self.client}, sent {self.sent}"


def _u16(value: int) -> str:
    return GREASE_TEXT if is_grease(value) else f"{value:04x}"


def _u16_text(values: Iterable[int]) -> str:
    return ",".join(_u16(v) for v in values)


def _u16_values(data: bytes, prefix: int) -> list[int] | None:
    if len(data) < prefix or int.from_bytes(data[:prefix], "big") != len(data) - prefix \
            or (len(data) - prefix) % 2:
        return None
    return list(struct.unpack_from(f">{(len(data) - prefix) // 2}H", data, prefix))


def _alpn_text(extension: Extension) -> str:
    if not isinstance(extension.value, list):
        return extension.data.hex()
    names = []
    for name in extension.value:
        grease = len(name) == 2 and name[0] == name[1] and name[0] & 0x0F == 0x0A
        names.append(GREASE_TEXT if grease else name.hex())
    return ",".join(names)


def _key_share_text(extension: Extension) -> str:
    if not isinstance(extension.value, list):
        return extension.data.hex()
    entries = []
    for entry in extension.value:
        if is_grease(entry.group):
            entries.append(f"{GREASE_TEXT}:{entry.key_exchange.hex()}")
        else:
            entries.append(f"{entry.group:04x}:{entry.key_length} bytes")
    return ",".join(entries)


def _ech_text(extension: Extension) -> str:
    ech = extension.value
    if not isinstance(ech, EchOuter) or ech.is_inner:
        return extension.data.hex()
    return (f"outer kdf {ech.kdf_id:04x} aead {ech.aead_id:04x} enc {len(ech.enc)} bytes "
            f"payload {ech.payload_length} bytes")


def masked_extension(extension: Extension) -> str:
    """An extension's body as compared: what varies per connection masked (see the module)."""
    kind = extension.type
    if kind in _U16_LISTS or kind in _U16_LISTS_SHORT:
        values = _u16_values(extension.data, 2 if kind in _U16_LISTS else 1)
        return extension.data.hex() if values is None else _u16_text(values)
    if kind == EXT_KEY_SHARE:
        return _key_share_text(extension)
    if kind == EXT_ENCRYPTED_CLIENT_HELLO:
        return _ech_text(extension)
    if kind == EXT_ALPN:
        return _alpn_text(extension)
    if kind == _PSK_KEY_EXCHANGE_MODES and isinstance(extension.value, list):
        return ",".join(GREASE_TEXT if is_grease_u8(m) else f"{m:02x}" for m in extension.value)
    if kind in _RESUMPTION_ONLY or kind == EXT_SESSION_TICKET:
        return "present"
    return extension.data.hex()


def _label(kind: int) -> str:
    return GREASE_TEXT if is_grease(kind) else str(kind)


def _keyed(extensions: list[Extension]) -> dict[str, Extension]:
    """Extensions by a name that pairs them across hellos: the type, GREASE ones by ordinal."""
    out: dict[str, Extension] = {}
    greases = 0
    for extension in extensions:
        if extension.is_grease:
            greases += 1
            out[f"grease#{greases}"] = extension
        else:
            out[EXTENSION_NAMES.get(extension.type, f"unknown_{extension.type}")] = extension
    return out


def hello_differences(client: ClientHello, sent: ClientHello) -> list[HelloDifference]:
    """How ``sent`` differs from ``client``, field by field, after masking (module docstring)."""
    out: list[HelloDifference] = []

    def compare(name: str, mine: str, theirs: str) -> None:
        if mine != theirs:
            out.append(HelloDifference(name, mine, theirs))

    if client.record_version is not None and sent.record_version is not None:
        compare("record_version", f"{client.record_version:04x}", f"{sent.record_version:04x}")
    compare("legacy_version", f"{client.legacy_version:04x}", f"{sent.legacy_version:04x}")
    compare("session_id_length", str(len(client.session_id)), str(len(sent.session_id)))
    compare("cipher_suites", _u16_text(client.cipher_suites), _u16_text(sent.cipher_suites))
    compare("compression_methods", bytes(client.compression_methods).hex(),
            bytes(sent.compression_methods).hex())
    sent_types = set(sent.extension_types)
    expected = [e for e in client.extensions
                if e.type not in _RESUMPTION_ONLY or e.type in sent_types]
    compare("extensions", ",".join(_label(e.type) for e in expected),
            ",".join(_label(e.type) for e in sent.extensions))
    theirs = _keyed(sent.extensions)
    for name, extension in _keyed(expected).items():
        other = theirs.get(name)
        if other is not None:
            compare(f"extension:{name}", masked_extension(extension), masked_extension(other))
    return out


def parse_hello_bytes(data: bytes) -> ClientHello:
    """A ClientHello from TLS records (``16 03 ..``) or a bare handshake message (``01 ..``).
    Raises ``WireError`` when ``data`` is not one complete ClientHello."""
    data = bytes(data)
    if data[:1] == bytes([HANDSHAKE_CLIENT_HELLO]):
        return parse_client_hello(data)
    hello = read_client_hello(data)
    if hello is None:
        raise WireError("the ClientHello is incomplete", layer="tls")
    return hello


def hello_differences_of_bytes(client: bytes, sent: bytes) -> list[HelloDifference]:
    """``hello_differences`` of two raw hellos (records or handshake messages)."""
    return hello_differences(parse_hello_bytes(client), parse_hello_bytes(sent))


def sent_hello_report(client: bytes, sent: bytes,
                      predicted_exact: bool | None = None) -> dict[str, object]:
    """The record's measured view of the hello written upstream: its JA4 / JA3, whether it
    equals the client's after masking, every differing field, and the plan's prediction.
    ``client`` is the client's first bytes (records) or hello message, ``sent`` the hello
    written upstream (a handshake message)."""
    from mirror.fingerprint.tls import ja3_string, ja4, ja4_o

    mine, theirs = parse_hello_bytes(client), parse_hello_bytes(sent)
    differences = hello_differences(mine, theirs)
    return {"measured": True, "exact": not differences, "predicted_exact": predicted_exact,
            "ja4": ja4(theirs), "ja4_o": ja4_o(theirs), "ja3": ja3_string(theirs),
            "differences": [{"field": d.field, "client": d.client, "sent": d.sent}
                            for d in differences]}
