"""Where upstream servers' certificates are verified against: the system's CA bundle."""

from __future__ import annotations

import os
import ssl


def system_ca_file() -> str | None:
    """The system's CA bundle (Debian: /etc/ssl/certs/ca-certificates.crt), else certifi's."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and os.path.exists(candidate):
            return candidate
    try:
        import certifi
        return certifi.where()
    except ImportError:
        return None
