"""Why a listening address could not be used, said in the words of the option that gave it.

``listen_error("--listen", host, port, error)`` turns the OSError of a bind (or of resolving a
listen name) into one line a person can act on: which address, and what to do about it.
"""

from __future__ import annotations

import errno
import socket

__all__ = ["listen_error"]


def _shown(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen_error(option: str, host: str, port: int, error: OSError) -> str:
    """One line: ``--listen 127.0.0.1:8080 is already in use (...)`` and the like."""
    where = f"{option} {_shown(host, port)}"
    if isinstance(error, socket.gaierror):
        return (f"{option} {host}: {host!r} is neither an IP address nor a name this machine "
                "resolves (give HOST:PORT, e.g. 127.0.0.1:8080)")
    if error.errno == errno.EADDRINUSE:
        return (f"{where} is already in use (another program listens there; choose another "
                "port, or port 0 for a free one)")
    if error.errno == errno.EADDRNOTAVAIL:
        return f"{where}: no network interface of this machine has that address"
    if error.errno == errno.EACCES:
        return (f"{where}: permission denied (ports below 1024 need root or "
                "CAP_NET_BIND_SERVICE)")
    return f"{where}: {error.strerror or error}"
