"""The libcurl options that make curl-impersonate's BoringSSL send a Fingerprint's hello.

The plan's ``Fingerprint`` (curl_cffi's dataclass) describes the ClientHello; this sets its
TLS fields on an easy handle, option by option, the way curl-impersonate reads them. Only the
TLS options: the proxy's handles carry no HTTP of libcurl's own (CONNECT_ONLY on
``gophers://``), so the Fingerprint's HTTP/2, HTTP/3, WebSocket and header fields do not apply.
"""

from __future__ import annotations

from curl_cffi import Curl, CurlOpt, CurlSslVersion
from curl_cffi.fingerprints import Fingerprint

_VERSIONS = {"1": CurlSslVersion.TLSv1, "1.0": CurlSslVersion.TLSv1_0,
             "1.1": CurlSslVersion.TLSv1_1, "1.2": CurlSslVersion.TLSv1_2,
             "1.3": CurlSslVersion.TLSv1_3}
_GROUP_ALIASES = {"X25519Kyber768": "X25519Kyber768Draft00"}   # BoringSSL's name for it
_PADDING = "21"     # BoringSSL adds padding itself, where it decides; never in an order


class FingerprintOptionError(ValueError):
    """A Fingerprint field holds a value libcurl cannot be given (e.g. an unknown version)."""


def apply_tls_fingerprint(curl: Curl, fingerprint: Fingerprint) -> None:
    """Set the ClientHello options of ``fingerprint`` on ``curl``."""
    if fingerprint.tls_version:
        version = _VERSIONS.get(fingerprint.tls_version.strip().lower().removeprefix("tlsv")
                                .replace("_", "."))
        if version is None:
            raise FingerprintOptionError(f"unsupported TLS version {fingerprint.tls_version!r}")
        curl.setopt(CurlOpt.SSLVERSION, version | CurlSslVersion.MAX_DEFAULT)
    if fingerprint.tls_ciphers:
        curl.setopt(CurlOpt.SSL_CIPHER_LIST, ":".join(fingerprint.tls_ciphers))
    if fingerprint.tls_extension_order and not fingerprint.tls_permute_extensions:
        order = "-".join(part for part in fingerprint.tls_extension_order.split("-")
                         if part != _PADDING)
        curl.setopt(CurlOpt.TLS_EXTENSION_ORDER, order)
    curl.setopt(CurlOpt.SSL_ENABLE_ALPN, int(fingerprint.tls_alpn))
    curl.setopt(CurlOpt.SSL_ENABLE_ALPS, int(fingerprint.tls_alps or
                                             fingerprint.tls_use_new_alps_codepoint))
    if fingerprint.tls_use_new_alps_codepoint:
        curl.setopt(CurlOpt.TLS_USE_NEW_ALPS_CODEPOINT, 1)
    curl.setopt(CurlOpt.SSL_ENABLE_TICKET, int(fingerprint.tls_session_ticket))
    curl.setopt(CurlOpt.TLS_GREASE, int(fingerprint.tls_grease))
    # an explicit extension order is also an allow-list in curl-impersonate's BoringSSL: the
    # optional extensions are switched on and the order leaves out those not sent
    curl.setopt(CurlOpt.TLS_STATUS_REQUEST, 1)
    curl.setopt(CurlOpt.TLS_SIGNED_CERT_TIMESTAMPS, int(fingerprint.tls_signed_cert_timestamps))
    curl.setopt(CurlOpt.TLS_KEY_SHARES_LIMIT, fingerprint.tls_key_shares_limit)
    curl.setopt(CurlOpt.SSL_CERT_COMPRESSION, ",".join(fingerprint.tls_cert_compression))
    if fingerprint.tls_signature_hashes:
        curl.setopt(CurlOpt.SSL_SIG_HASH_ALGS, ",".join(fingerprint.tls_signature_hashes))
    if fingerprint.tls_supported_groups:
        curl.setopt(CurlOpt.SSL_EC_CURVES, ":".join(_GROUP_ALIASES.get(group, group) for group
                                                    in fingerprint.tls_supported_groups))
    if fingerprint.tls_delegated_credentials:
        curl.setopt(CurlOpt.TLS_DELEGATED_CREDENTIALS,
                    ":".join(fingerprint.tls_delegated_credentials))
    curl.setopt(CurlOpt.SSL_PERMUTE_EXTENSIONS, int(fingerprint.tls_permute_extensions))
    if fingerprint.tls_record_size_limit is not None:
        curl.setopt(CurlOpt.TLS_RECORD_SIZE_LIMIT, fingerprint.tls_record_size_limit)
    if fingerprint.tls_ech is not None:
        curl.setopt(CurlOpt.ECH, fingerprint.tls_ech)
    if fingerprint.tls_trust_anchors is not None:
        curl.setopt(CurlOpt.TLS_TRUST_ANCHORS, ",".join(fingerprint.tls_trust_anchors))
