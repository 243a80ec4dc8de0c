"""Key exchange groups: fresh key shares for a ClientHello and the shared secret from the server's.

``new_share(group, length)`` makes fresh key material for a ``key_share`` entry the client sent
with ``length`` bytes; ``shared_secret(share, server_bytes)`` turns the server's share into the
(EC)DHE / hybrid secret. Supported: X25519, X448, P-256/384/521, ffdhe2048–8192 (RFC 7919),
X25519MLKEM768 (ML-KEM part first), SecP256r1MLKEM768 and SecP384r1MLKEM1024 (ECDH part first).
Groups this module cannot compute get random bytes of the client's length (``share.private is
None``): offered as the client offered them, refused if the server picks one.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec, mlkem, x448, x25519

from mirror.replay.errors import ReplayError

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from cryptography.hazmat.primitives.asymmetric import dh

X25519, X448 = 0x001D, 0x001E
SECP256R1, SECP384R1, SECP521R1 = 0x0017, 0x0018, 0x0019
FFDHE = {0x0100: 2048, 0x0101: 3072, 0x0102: 4096, 0x0103: 6144, 0x0104: 8192}
X25519MLKEM768, SECP256R1MLKEM768, SECP384R1MLKEM1024 = 0x11EC, 0x11EB, 0x11ED

_CURVES = {SECP256R1: (ec.SECP256R1, 65), SECP384R1: (ec.SECP384R1, 97),
           SECP521R1: (ec.SECP521R1, 133)}
# RFC 7919 appendix A: p = 2^b - 2^(b-64) + (floor(2^(b-130) * e) + X) * 2^64 - 1, g = 2.
_FFDHE_X = {2048: 560316, 3072: 2625351, 4096: 5736041, 6144: 15705020, 8192: 10965728}
_ffdhe_params: dict[int, object] = {}

GROUP_NAMES = {X25519: "x25519", X448: "x448", SECP256R1: "secp256r1", SECP384R1: "secp384r1",
               SECP521R1: "secp521r1", X25519MLKEM768: "X25519MLKEM768",
               SECP256R1MLKEM768: "SecP256r1MLKEM768", SECP384R1MLKEM1024: "SecP384r1MLKEM1024",
               **{g: f"ffdhe{b}" for g, b in FFDHE.items()}}


def group_name(group: int) -> str:
    return GROUP_NAMES.get(group, f"{group:#06x}")


def _e_fixed(bits: int) -> int:
    """floor(e * 2**bits), from the series sum 1/k! in integers."""
    guard = 64
    term = 1 << (bits + guard)
    total, k = 0, 0
    while term:
        total += term
        k += 1
        term //= k
    return total >> guard


def ffdhe_prime(bits: int) -> int:
    return 2**bits - 2**(bits - 64) + (_e_fixed(bits - 130) + _FFDHE_X[bits]) * 2**64 - 1


def _ffdhe(bits: int):
    params = _ffdhe_params.get(bits)
    if params is None:
        p = ffdhe_prime(bits)
        with warnings.catch_warnings():  # finite-field DH is deprecated in cryptography
            warnings.simplefilter("ignore")
            params = dh.DHParameterNumbers(p, 2, (p - 1) // 2).parameters()
        _ffdhe_params[bits] = params
    return params


def natural_length(group: int) -> int | None:
    """The key_share length a client of ``group`` sends, None for groups this module lacks."""
    if group in (X25519, X448):
        return 32 if group == X25519 else 56
    if group in _CURVES:
        return _CURVES[group][1]
    if group in FFDHE:
        return FFDHE[group] // 8
    if group == SECP384R1MLKEM1024 and not hasattr(mlkem, "MLKEM1024PrivateKey"):
        return None  # ML-KEM-1024 arrived in a later cryptography than ML-KEM-768 (47)
    return {X25519MLKEM768: 1184 + 32, SECP256R1MLKEM768: 65 + 1184,
            SECP384R1MLKEM1024: 97 + 1568}.get(group)


@dataclass(slots=True)
class KeyShare:
    """One fresh key share: the bytes to send and the private parts to finish the exchange."""

    group: int
    public: bytes
    private: tuple | None


def new_share(group: int, length: int | None = None) -> KeyShare:
    """Fresh key material for ``group``; ``length`` is what the client sent (must match)."""
    natural = natural_length(group)
    if length is None:
        length = natural
    if natural is None or natural != length:
        if length is None:
            raise ReplayError("hello", f"no key share can be made for group {group_name(group)}")
        return KeyShare(group, os.urandom(length), None)
    if group == X25519:
        x25519_key = x25519.X25519PrivateKey.generate()
        return KeyShare(group, x25519_key.public_key().public_bytes_raw(), (x25519_key,))
    if group == X448:
        x448_key = x448.X448PrivateKey.generate()
        return KeyShare(group, x448_key.public_key().public_bytes_raw(), (x448_key,))
    if group in _CURVES:
        ec_key = ec.generate_private_key(_CURVES[group][0]())
        return KeyShare(group, _point(ec_key), (ec_key,))
    if group in FFDHE:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dh_key = _ffdhe(FFDHE[group]).generate_private_key()
            y = dh_key.public_key().public_numbers().y
        return KeyShare(group, y.to_bytes(length, "big"), (dh_key,))
    if group == X25519MLKEM768:
        kem, x25519_ecdh = mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate()
        return KeyShare(group, kem.public_key().public_bytes_raw()
                        + x25519_ecdh.public_key().public_bytes_raw(), (kem, x25519_ecdh))
    curve = SECP256R1 if group == SECP256R1MLKEM768 else SECP384R1
    ecdh = ec.generate_private_key(_CURVES[curve][0]())
    nist_kem = (mlkem.MLKEM768PrivateKey if curve == SECP256R1
                else mlkem.MLKEM1024PrivateKey).generate()
    return KeyShare(group, _point(ecdh) + nist_kem.public_key().public_bytes_raw(),
                    (ecdh, nist_kem))


def _point(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def _bad(group: int, why: str) -> ReplayError:
    return ReplayError("decode", f"server key share for {group_name(group)}: {why}",
                       alert=47)


def _ecdh(key, peer: bytes, group: int) -> bytes:
    curve = key.curve
    if len(peer) != _CURVES[{256: SECP256R1, 384: SECP384R1, 521: SECP521R1}[curve.key_size]][1] \
            or peer[0] != 4:
        raise _bad(group, "not an uncompressed point of the right size")
    try:
        public = ec.EllipticCurvePublicKey.from_encoded_point(curve, peer)
        return key.exchange(ec.ECDH(), public)
    except ValueError as error:
        raise _bad(group, str(error)) from None


def _xdh(key, peer: bytes, group: int) -> bytes:
    cls = x25519.X25519PublicKey if group == X25519 else x448.X448PublicKey
    try:
        return key.exchange(cls.from_public_bytes(peer))
    except ValueError as error:  # wrong length or an all-zero result (small-order point)
        raise _bad(group, str(error)) from None


def shared_secret(share: KeyShare, peer: bytes) -> bytes:
    """The shared secret from the server's key share bytes (or KEM ciphertext) for ``share``."""
    group = share.group
    if share.private is None:
        raise ReplayError("unsupported", f"group {group_name(group)} is offered as the client "
                          "offered it, but this engine cannot compute it")
    if group in (X25519, X448):
        return _xdh(share.private[0], peer, group)
    if group in _CURVES:
        return _ecdh(share.private[0], peer, group)
    if group in FFDHE:
        key = share.private[0]
        numbers = key.parameters().parameter_numbers()
        size = FFDHE[group] // 8
        y = int.from_bytes(peer, "big")
        if len(peer) != size or not 1 < y < numbers.p - 1:
            raise _bad(group, "not a public value in range")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            public = dh.DHPublicNumbers(y, numbers).public_key()
            return key.exchange(public).rjust(size, b"\0")  # RFC 8446 7.4.1: left-padded
    kem, ecdh = share.private if group == X25519MLKEM768 else share.private[::-1]
    kem_len = 1088 if group != SECP384R1MLKEM1024 else 1568
    if group == X25519MLKEM768:
        if len(peer) != kem_len + 32:
            raise _bad(group, f"{len(peer)} bytes")
        try:
            kem_secret = kem.decapsulate(peer[:kem_len])
        except ValueError as error:
            raise _bad(group, str(error)) from None
        return kem_secret + _xdh(ecdh, peer[kem_len:], X25519)
    point = _CURVES[SECP256R1 if group == SECP256R1MLKEM768 else SECP384R1][1]
    if len(peer) != point + kem_len:
        raise _bad(group, f"{len(peer)} bytes")
    ec_secret = _ecdh(ecdh, peer[:point], group)
    try:
        return ec_secret + kem.decapsulate(peer[point:])
    except ValueError as error:
        raise _bad(group, str(error)) from None
