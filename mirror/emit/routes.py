"""Which way each upstream connection goes: directly, or through an upstream proxy.

``--upstream-proxy URL`` (http://, https://, socks5://, socks5h://, credentials in the URL)
is the default way out; ``--route 'REGEX=URL|direct|upstream'`` rules, first match wins,
choose per destination host. Credentials live only in ``UpstreamProxy.url`` (what libcurl and
the tunnel code need); everything printed, logged or stored uses ``display``, which has none.
Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

SCHEMES = {"http": 8080, "https": 443, "socks5": 1080, "socks5h": 1080}


class RouteError(ValueError):
    """A proxy URL or a route rule that cannot be used (the message never holds a password)."""


@dataclass(frozen=True, slots=True)
class UpstreamProxy:
    scheme: str
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def display(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The URL with credentials, for libcurl only."""
        from urllib.parse import quote

        auth = ""
        if self.username is not None:
            auth = quote(self.username, safe="")
            if self.password is not None:
                auth += ":" + quote(self.password, safe="")
            auth += "@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{auth}{host}:{self.port}"

    @property
    def tunnels_http(self) -> bool:
        return self.scheme in ("http", "https")

    def redact(self, text: str) -> str:
        """``text`` with this proxy's password (plain or URL-encoded) blotted out."""
        if self.password:
            from urllib.parse import quote

            for secret in {self.password, quote(self.password, safe="")}:
                text = text.replace(secret, "***")
        return text

    def __str__(self) -> str:
        return self.display


def parse_proxy_url(text: str) -> UpstreamProxy:
    text = text.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise RouteError("upstream proxy: not a URL with a valid port") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise RouteError(f"upstream proxy: scheme must be one of {', '.join(SCHEMES)}, "
                         f"not {scheme or 'missing'!r}")
    if not parts.hostname:
        raise RouteError("upstream proxy: no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise RouteError("upstream proxy: a proxy URL has no path, query or fragment")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return UpstreamProxy(scheme, parts.hostname, port or SCHEMES[scheme], username, password)


@dataclass(frozen=True, slots=True)
class Route:
    pattern: re.Pattern[str]
    proxy: UpstreamProxy | None          # None: direct

    @property
    def display(self) -> str:
        return f"{self.pattern.pattern}={self.proxy.display if self.proxy else 'direct'}"


def parse_route(text: str, default: UpstreamProxy | None) -> Route:
    """``REGEX=URL``, ``REGEX=direct`` or ``REGEX=upstream`` (the --upstream-proxy)."""
    pattern, sep, target = text.rpartition("=")
    if not sep or not pattern:
        raise RouteError(f"route {text.split('=')[0]!r}...: expected REGEX=URL|direct|upstream")
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise RouteError(f"route {pattern!r}: not a regular expression: {error}") from None
    target = target.strip()
    if target == "direct":
        return Route(compiled, None)
    if target == "upstream":
        if default is None:
            raise RouteError(f"route {pattern!r}: 'upstream' needs --upstream-proxy")
        return Route(compiled, default)
    return Route(compiled, parse_proxy_url(target))


@dataclass(frozen=True, slots=True)
class Router:
    routes: tuple[Route, ...] = ()
    default: UpstreamProxy | None = None

    def choose(self, host: str) -> UpstreamProxy | None:
        """The proxy for connections to ``host`` (None: direct). First matching rule wins."""
        for route in self.routes:
            if route.pattern.search(host):
                return route.proxy
        return self.default

    @staticmethod
    def label(proxy: UpstreamProxy | None) -> str:
        return f"via {proxy.display}" if proxy else "direct"
