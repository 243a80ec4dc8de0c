"""Who may use the proxy: client networks, connections per client address, and (explicit
modes) proxy credentials — Basic for HTTP, username/password for SOCKS5 — compared in
constant time. Pure apart from the clock-free counters the server keeps."""

from __future__ import annotations

import hmac
import ipaddress
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class AccessPolicy:
    allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_per_client: int = 0                   # 0: no limit
    credentials: tuple[str, str] | None = None
    _open: Counter = field(default_factory=Counter)

    def admit(self, address: str) -> str | None:
        """None if a new connection from ``address`` may proceed, else why not."""
        if self.allow:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                return f"{address} is not an address"
            if not any(ip in network for network in self.allow):
                return f"{address} is not in the allowed client networks"
        if self.max_per_client and self._open[address] >= self.max_per_client:
            return f"{address} already has {self._open[address]} connections (the limit)"
        self._open[address] += 1
        return None

    def release(self, address: str) -> None:
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]

    def check(self, user: str | bytes | None, password: str | bytes | None) -> bool:
        """True when no credentials are required, or these are the right ones."""
        if self.credentials is None:
            return True
        if user is None or password is None:
            return False
        want_user, want_password = (v.encode() for v in self.credentials)
        got_user = user.encode() if isinstance(user, str) else bytes(user)
        got_password = password.encode() if isinstance(password, str) else bytes(password)
        # both comparisons always run: the time does not tell which part was wrong
        return hmac.compare_digest(got_user, want_user) & hmac.compare_digest(
            got_password, want_password)


def parse_networks(values) -> tuple:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)
