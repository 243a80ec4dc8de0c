"""The certificate store the replay engine verifies servers against, built once per CA file
(and again when the file changes): building one costs about as much as a handshake."""

from __future__ import annotations

import os
import threading

from cryptography.x509.verification import Store

from mirror.replay.verify import load_trust
from mirror.upstream.connection import UpstreamError

_lock = threading.Lock()
_stores: dict[str, tuple[tuple[int, int], Store]] = {}


def trust_store(path: str) -> Store:
    """The Store of the CA certificates in the PEM file ``path``. Raises ``UpstreamError``
    (stage ``upstream-certificate``) when it cannot be read or holds no certificate."""
    try:
        info = os.stat(path)
        stamp = (info.st_mtime_ns, info.st_size)
        with _lock:
            cached = _stores.get(path)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        store = load_trust(path)
    except OSError as error:
        raise UpstreamError(f"cannot read the CA file {path}: {error.strerror or error}",
                            "upstream-certificate") from None
    except ValueError:
        raise UpstreamError(f"no CA certificate could be loaded from {path}",
                            "upstream-certificate") from None
    with _lock:
        _stores[path] = (stamp, store)
    return store
