"""HTTP fingerprints: FoxIO's JA4H (and its _r / _o / _ro renderings) and Akamai's HTTP/2 string.

One job: pure functions from parsed request values to fingerprint strings. Nothing here
parses bytes; the inputs come from :mod:`mirror.wire.http1` (method, version, headers of a
``RequestHead``) and :mod:`mirror.wire.http2` (a ``Headers`` event's list, an
``H2Fingerprint``).

JA4H is FoxIO's, licensed under the FoxIO License 1.1 (internal and non-commercial use
allowed). The format, ``{a}_{b}_{c}_{d}``:

* ``a`` = method (first two letters, lowercase) + version (``10``/``11``/``20``/``30``) +
  ``c``/``n`` (a Cookie header is present) + ``r``/``n`` (a Referer header is present) + the
  number of headers (two digits, at most 99) + the primary Accept-Language (four characters);
* ``b`` = sha256[:12] of the header names, comma-joined, in wire order and original case;
* ``c`` = sha256[:12] of the cookie names, sorted, comma-joined;
* ``d`` = sha256[:12] of the cookies (``name=value``), sorted, comma-joined;
* an empty ``b``/``c``/``d`` input is written ``000000000000``.

Edge cases, decided by reading FoxIO's python (``python/ja4h.py``) and rust
(``rust/ja4/src/http.rs``) implementations and their expected outputs (our vectors), where
the two disagree:

* Cookie and Referer are matched by name case-insensitively (python lowercases for Referer;
  rust's HTTP/1 path compares the exact ``Cookie``/``Referer`` spelling, its HTTP/2 path the
  lowercase one — case-insensitive covers both). Only the exact names count: python drops
  any header *starting* with "cookie" (so ``Cookie2`` too); we keep such headers.
* HTTP/2 pseudo-headers (names starting with ``:``) are neither counted nor hashed (python;
  rust's HTTP/2 path hashes them — its ``http2-with-cookies`` snapshot counts 23 headers where
  python counts 19).
* Empty header names are dropped (python).
* Cookies are gathered from every Cookie header in order (HTTP/2 clients send one per cookie,
  RFC 9113 §8.2.3), split on ``;``, each piece stripped of whitespace; empty pieces are
  dropped. The name is the text before the first ``=`` (the whole piece if none).
* Sorting: cookies are sorted by ``(name, piece)``: name order as python and the spec
  ("sorted cookie fields"); equal names ordered by the whole piece, as rust (which sorts the
  whole strings) — python keeps wire order there, which would make the sorted hash depend on
  order, the thing sorting is meant to remove.
* Accept-Language (first such header): the part before the first ``,`` or ``;``, stripped,
  ``-`` removed, lowercased, first four characters, right-padded with ``0``; ``0000`` when the
  header is absent or empty (python splits on both ``,`` and ``;``; rust only on ``,``).
* Method: the first two characters lowercased, padded with ``0`` if the method is a single
  character (python slices; rust refuses methods it does not know).
* Version: ``HTTP/1.0`` -> ``10``, ``HTTP/1.1`` -> ``11``, ``HTTP/2``/``HTTP/2.0`` -> ``20``,
  ``HTTP/3`` -> ``30``; anything else -> ``00``.
* ``ja4h_r``/``ja4h_ro`` (raw renderings) follow python: ``{a}_{names}_`` and, only when there
  are cookies, ``{cookie names}_{cookies}`` after it — so a request without cookies ends in a
  single ``_`` (rust prints ``{a}_{names}__``). ``_r`` uses sorted cookies, ``_ro`` wire order.
* ``ja4h_o`` is rust's "original order" JA4H: cookie hashes over the unsorted cookies (the
  header names are never sorted in any rendering).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mirror.wire.http2 import H2Fingerprint

_EMPTY_HASH = "000000000000"


def _hash12(text: str) -> str:
    if not text:
        return _EMPTY_HASH
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


# A client sends the same header names (and cookie names) on every request: their hashes are
# kept (not the cookies' values, which differ and are secrets).
_hash12_of_names = functools.lru_cache(maxsize=1024)(_hash12)


@dataclass(slots=True, frozen=True)
class _Ja4hParts:
    prefix: str  # section a
    names: list[str]  # headers counted and hashed, wire order
    cookies: list[tuple[str, str]]  # (name, piece), wire order

    def sorted_cookies(self) -> list[tuple[str, str]]:
        return sorted(self.cookies)


def _method_code(method: str) -> str:
    return (method.lower() + "00")[:2]


def _version_code(version: str) -> str:
    text = version.strip().upper()
    text = text.removeprefix("HTTP/")
    return {"1.0": "10", "1.1": "11", "2": "20", "2.0": "20", "3": "30", "3.0": "30"}.get(
        text, "00"
    )


def _language_code(value: str | None) -> str:
    if not value:
        return "0000"
    primary = value.replace(";", ",").split(",", 1)[0].strip().replace("-", "").lower()
    return (primary[:4] + "0000")[:4]


def _parts(method: str, version: str, headers: Iterable[tuple[str, str]]) -> _Ja4hParts:
    names: list[str] = []
    cookies: list[tuple[str, str]] = []
    has_cookie = has_referer = False
    language: str | None = None
    for name, value in headers:
        lower = name.lower()
        if not name or name.startswith(":"):
            continue
        if lower == "cookie":
            has_cookie = True
            for piece in value.split(";"):
                piece = piece.strip()
                if piece:
                    cookies.append((piece.split("=", 1)[0].strip(), piece))
            continue
        if lower == "referer":
            has_referer = True
            continue
        if lower == "accept-language" and language is None:
            language = value
        names.append(name)
    prefix = (
        f"{_method_code(method)}{_version_code(version)}"
        f"{'c' if has_cookie else 'n'}{'r' if has_referer else 'n'}"
        f"{min(len(names), 99):02d}{_language_code(language)}"
    )
    return _Ja4hParts(prefix, names, cookies)


def _hashed(parts: _Ja4hParts, cookies: Sequence[tuple[str, str]]) -> str:
    cookie_names = ",".join(name for name, _ in cookies)
    cookie_items = ",".join(piece for _, piece in cookies)
    return (
        f"{parts.prefix}_{_hash12_of_names(','.join(parts.names))}"
        f"_{_hash12_of_names(cookie_names)}_{_hash12(cookie_items)}"
    )


def _raw(parts: _Ja4hParts, cookies: Sequence[tuple[str, str]]) -> str:
    text = f"{parts.prefix}_{','.join(parts.names)}_"
    if cookies:
        text += ",".join(name for name, _ in cookies) + "_" + ",".join(p for _, p in cookies)
    return text


def ja4h(method: str, version: str, headers: Iterable[tuple[str, str]]) -> str:
    """JA4H of one request: ``headers`` in wire order (HTTP/2: pseudo-headers may be
    included, they are skipped), ``version`` like ``"HTTP/1.1"`` or ``"HTTP/2"``."""
    parts = _parts(method, version, headers)
    return _hashed(parts, parts.sorted_cookies())


def ja4h_o(method: str, version: str, headers: Iterable[tuple[str, str]]) -> str:
    """JA4H with the cookies hashed in wire order instead of sorted."""
    parts = _parts(method, version, headers)
    return _hashed(parts, parts.cookies)


def ja4h_r(method: str, version: str, headers: Iterable[tuple[str, str]]) -> str:
    """JA4H unhashed, cookies sorted: ``{a}_{names}_[{cookie names}_{cookies}]``."""
    parts = _parts(method, version, headers)
    return _raw(parts, parts.sorted_cookies())


def ja4h_ro(method: str, version: str, headers: Iterable[tuple[str, str]]) -> str:
    """JA4H unhashed, cookies in wire order."""
    parts = _parts(method, version, headers)
    return _raw(parts, parts.cookies)


def ja4h_all(method: str, version: str, headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """``ja4h``, ``ja4h_r``, ``ja4h_o`` and ``ja4h_ro`` at once (the headers read once)."""
    parts = _parts(method, version, headers)
    ordered = parts.sorted_cookies()
    return {"ja4h": _hashed(parts, ordered), "ja4h_r": _raw(parts, ordered),
            "ja4h_o": _hashed(parts, parts.cookies), "ja4h_ro": _raw(parts, parts.cookies)}


# --------------------------------------------------------------------------- Akamai HTTP/2


def akamai(fp: H2Fingerprint) -> str:
    """Akamai's passive HTTP/2 fingerprint, ``S[;]|WU|P[,]|PS[,]``, as tls.peet.ws prints it.

    Chrome, for example: ``1:65536;2:0;4:6291456;6:262144|15663105|0|m,a,s,p``.

    * ``S``: the first SETTINGS frame's ``id:value`` pairs in wire order joined by ``;``
      (duplicates and unknown/GREASE ids included, as sent; an empty SETTINGS gives "");
    * ``WU``: the first connection WINDOW_UPDATE increment, or ``00`` when none was sent
      before the first HEADERS (Akamai's white paper and TrackMe, the code behind
      tls.peet.ws, both print ``00``);
    * ``P``: the PRIORITY frames sent before the first HEADERS as
      ``stream:exclusive:depends_on:weight`` joined by ``,``, or ``0`` when there were none.
      ``exclusive`` is ``1``/``0`` and ``weight`` is the RFC weight, i.e. the wire byte + 1
      (1-256): Akamai's paper lists Firefox as ``3:0:0:201,5:0:0:101,...`` for wire bytes 200
      and 100, and TrackMe adds 1 to Go's wire value. curl-impersonate's HTTP2_STREAMS option
      (what curl_cffi's ``akamai=`` feeds) takes the same form;
    * ``PS``: the first letter of each pseudo-header of the first request, in order, joined by
      ``,`` (``:method`` -> ``m``, ``:authority`` -> ``a``, ``:scheme`` -> ``s``, ``:path``
      -> ``p``; ``:protocol`` also gives ``p``, as in every implementation seen).

    The first HEADERS frame's own priority fields are not part of Akamai's format (they are in
    ``fp.headers_priority`` for whoever needs them).
    """
    settings = ";".join(f"{ident}:{value}" for ident, value in fp.settings)
    window = "00" if fp.window_update is None else str(fp.window_update)
    if fp.priority_frames:
        priorities = ",".join(
            f"{p.stream_id}:{int(p.exclusive)}:{p.depends_on}:{p.weight + 1}"
            for p in fp.priority_frames
        )
    else:
        priorities = "0"
    order = ",".join(name[1:2] for name in fp.pseudo_header_order)
    return f"{settings}|{window}|{priorities}|{order}"
