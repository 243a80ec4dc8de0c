"""Load and validate the reference fingerprints of real clients (fingerprints/NAME.json).

The files are written by ``tools/capture_references.py`` from what ``mirror echo`` saw of each
client. :func:`load_references` reads every ``*.json`` file of a directory, checks its shape
(required keys and their types), re-parses the stored raw ClientHello with
:func:`mirror.wire.tls.read_client_hello` and recomputes JA4, JA4_o and the full JA3 string,
which must equal the stored ones. Any problem raises :class:`ReferenceFileError` naming the file
and the field, so a hand-edited or corrupted file never silently becomes a "reference".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mirror.fingerprint.tls import ja3_string, ja4, ja4_o
from mirror.wire.errors import WireError
from mirror.wire.tls import read_client_hello

__all__ = [
    "Reference",
    "ReferenceFileError",
    "default_directory",
    "load_reference",
    "load_references",
]

MAX_RECORD = 16384


class ReferenceFileError(ValueError):
    """A reference file is missing, malformed or inconsistent.

    ``path`` is the file, ``field`` the dotted name of the offending field (``""`` for the file
    as a whole); both also appear in the message.
    """

    def __init__(self, path: Path, field: str, message: str) -> None:
        self.path = Path(path)
        self.field = field
        where = f"{self.path.name}: {field}" if field else self.path.name
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True, slots=True)
class Reference:
    """One validated reference client: its name, file and the file's JSON content."""

    name: str
    path: Path
    data: dict[str, Any] = field(repr=False, compare=False)

    @property
    def ja4(self) -> str:
        return self.data["tls"]["ja4"]

    @property
    def ja4_o(self) -> str:
        return self.data["tls"]["ja4_o"]

    @property
    def raw_client_hello(self) -> bytes:
        return bytes.fromhex(self.data["tls"]["raw_client_hello"])

    @property
    def akamai(self) -> str | None:
        http2 = self.data.get("http2")
        return http2["akamai"] if http2 else None

    @property
    def http1_header_order(self) -> list[str] | None:
        http1 = self.data.get("http1")
        return list(http1["header_order"]) if http1 else None

    @property
    def http2_header_order(self) -> list[str] | None:
        """Regular header names in wire order (pseudo-headers: ``http2_pseudo_header_order``)."""
        http2 = self.data.get("http2")
        return list(http2["header_order"]) if http2 else None

    @property
    def http2_pseudo_header_order(self) -> list[str] | None:
        http2 = self.data.get("http2")
        return list(http2["pseudo_header_order"]) if http2 else None


def default_directory() -> Path:
    """The references shipped with mirror: ``mirror/references_data`` in an installed wheel
    (setup.py copies the repository's ``fingerprints/`` there), else the source tree's
    ``fingerprints/`` (a checkout or an editable install). ``--references DIR`` overrides it."""
    package = Path(__file__).resolve().parents[1]  # mirror/
    packaged = package / "references_data"
    return packaged if packaged.is_dir() else package.parent / "fingerprints"


# Required keys per section and the type each must have.
_INT_LIST = "list[int]"
_STR_LIST = "list[str]"
_TOP = {"client": dict, "provenance": dict, "tls": dict}
_PROVENANCE = {"captured_at": str, "command": str, "how": str, "host": str}
_TLS = {
    "raw_client_hello": str, "cipher_suites": _INT_LIST, "extension_types": _INT_LIST,
    "supported_groups": _INT_LIST, "signature_algorithms": _INT_LIST,
    "supported_versions": _INT_LIST, "key_shares": list, "alpn": _STR_LIST,
    "compress_certificate": _INT_LIST, "ja3": str, "ja3_full": str, "ja3n": str, "ja4": str,
    "ja4_o": str, "ja4_r": str, "ja4_ro": str,
}
_HTTP2 = {
    "akamai": str, "settings": list, "pseudo_header_order": _STR_LIST,
    "header_order": _STR_LIST, "ja4h": str,
}
_HTTP1 = {"header_order": _STR_LIST, "ja4h": str}
# Parsed fields that must equal what the raw hello says (name in file -> ClientHello property).
_PARSED = ["cipher_suites", "extension_types", "supported_groups", "signature_algorithms",
           "supported_versions", "alpn", "compress_certificate"]


def _type_ok(value: Any, expected: Any) -> bool:
    if expected == _INT_LIST:
        return isinstance(value, list) and all(type(v) is int for v in value)
    if expected == _STR_LIST:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if expected is int:
        return type(value) is int
    return isinstance(value, expected)


def _check_section(path: Path, section: Any, prefix: str, spec: dict[str, Any]) -> None:
    for key, expected in spec.items():
        name = f"{prefix}.{key}" if prefix else key
        if key not in section:
            raise ReferenceFileError(path, name, "required field is missing")
        if not _type_ok(section[key], expected):
            want = expected if isinstance(expected, str) else expected.__name__
            got = type(section[key]).__name__
            raise ReferenceFileError(path, name, f"expected {want}, got {got}")


def _as_records(handshake: bytes) -> bytes:
    """The handshake message wrapped in TLS handshake records, as a client would send it."""
    out = bytearray()
    for start in range(0, len(handshake), MAX_RECORD):
        chunk = handshake[start:start + MAX_RECORD]
        out += b"\x16\x03\x01" + len(chunk).to_bytes(2, "big") + chunk
    return bytes(out)


def validate(path: Path, data: Any) -> None:
    """Raise :class:`ReferenceFileError` unless ``data`` is a well-formed, consistent reference."""
    if not isinstance(data, dict):
        raise ReferenceFileError(path, "", "top level must be a JSON object")
    _check_section(path, data, "", _TOP)
    _check_section(path, data["provenance"], "provenance", _PROVENANCE)
    tls = data["tls"]
    _check_section(path, tls, "tls", _TLS)
    for key, spec in (("http2", _HTTP2), ("http1", _HTTP1)):
        if key not in data:
            raise ReferenceFileError(path, key,
                                     "required field is missing (null when not captured)")
        if data[key] is None:
            continue
        if not isinstance(data[key], dict):
            got = type(data[key]).__name__
            raise ReferenceFileError(path, key, f"expected object or null, got {got}")
        _check_section(path, data[key], key, spec)
    if data["http2"] is None and data["http1"] is None:
        raise ReferenceFileError(path, "http1", "neither http1 nor http2 was captured")

    try:
        raw = bytes.fromhex(tls["raw_client_hello"])
    except ValueError as error:
        raise ReferenceFileError(path, "tls.raw_client_hello", f"not hex: {error}") from None
    if not raw:
        raise ReferenceFileError(path, "tls.raw_client_hello", "empty")
    try:
        hello = read_client_hello(_as_records(raw))
    except WireError as error:
        raise ReferenceFileError(path, "tls.raw_client_hello",
                                 f"not a ClientHello: {error}") from None
    if hello is None:
        raise ReferenceFileError(path, "tls.raw_client_hello", "truncated ClientHello")

    for key, compute in (("ja4", ja4), ("ja4_o", ja4_o), ("ja3_full", ja3_string)):
        recomputed = compute(hello)
        if tls[key] != recomputed:
            raise ReferenceFileError(path, f"tls.{key}",
                                     f"stored {tls[key]!r} but the raw hello gives {recomputed!r}")
    for key in _PARSED:
        parsed = list(getattr(hello, key))
        if tls[key] != parsed:
            raise ReferenceFileError(path, f"tls.{key}",
                                     f"stored {tls[key]!r} but the raw hello gives {parsed!r}")


def load_reference(path: Path) -> Reference:
    """Read and validate one reference file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReferenceFileError(path, "", f"unreadable: {error}") from None
    validate(path, data)
    return Reference(name=data.get("name") if isinstance(data.get("name"), str) else path.stem,
                     path=path, data=data)


def load_references(directory: Path | None = None) -> list[Reference]:
    """Every ``*.json`` reference in ``directory`` (default: the shipped ones), by name.

    Raises :class:`ReferenceFileError` on the first bad file, and when the directory is missing.
    """
    directory = Path(directory) if directory is not None else default_directory()
    if not directory.is_dir():
        raise ReferenceFileError(directory, "", "reference directory not found")
    return [load_reference(path) for path in sorted(directory.glob("*.json"))]
