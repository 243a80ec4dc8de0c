"""A bounded cache of certificate chains that verified, as browsers keep one (Chrome's
CertVerifier cache): building a chain and checking its signatures is a large share of a new
upstream connection's CPU, and most connections present a chain verified moments before.

The caller chooses the key: the exact DER bytes of the chain the server sent (leaf and
intermediates, in order), the identity of the trust it was verified against, and anything else
the verification depends on. An entry answers from its verification until the earliest notAfter
of the verified path or ``max_age`` seconds, whichever comes first (and not before the latest
notBefore); after that it is a miss and the chain is verified again. Only successes are stored.
What an entry stands for is the chain's verification alone: the engines still check the
handshake's signature with the leaf's key, its Finished and the TLS policy on every connection.
Times are POSIX seconds; ``clock`` is injectable for tests. Thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography import x509

DEFAULT_SIZE = 4096
DEFAULT_MAX_AGE = 600.0   # seconds an entry answers at most, even for a long-lived chain


class VerifiedChains:
    """Least recently used entries go first once there are ``size``. ``hits`` and ``misses``
    count ``get`` answers."""

    def __init__(self, size: int = DEFAULT_SIZE, max_age: float = DEFAULT_MAX_AGE,
                 clock: Callable[[], float] = time.time) -> None:
        self.size, self.max_age, self.clock = size, max_age, clock
        self._entries: OrderedDict[Hashable, tuple[Any, float, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, now: float | None = None) -> Any | None:
        """The value stored for ``key`` while it is valid at ``now`` (default: the clock's
        time), else None."""
        when = self.clock() if now is None else now
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                value, not_before, until = entry
                if not_before <= when < until:
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return value
                if when >= until:
                    del self._entries[key]
            self.misses += 1
            return None

    def put(self, key: Hashable, value: Any, *, not_before: float, not_after: float,
            now: float | None = None) -> None:
        """Remember a successful verification made at ``now`` (default: the clock's time) of
        a path valid from ``not_before`` to ``not_after``."""
        when = self.clock() if now is None else now
        until = min(not_after, when + self.max_age)
        with self._lock:
            self._entries[key] = (value, not_before, until)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def put_path(self, key: Hashable, value: Any, path: Iterable[x509.Certificate], *,
                 now: float | None = None) -> None:
        """``put`` for a verified path of certificates: valid from its latest notBefore to its
        earliest notAfter."""
        certs = list(path)
        self.put(key, value, now=now,
                 not_before=max(cert.not_valid_before_utc for cert in certs).timestamp(),
                 not_after=min(cert.not_valid_after_utc for cert in certs).timestamp())

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
