"""An NSS key-log file (SSLKEYLOGFILE format) shared by both legs of every connection.

The client leg's secrets are written by OpenSSL itself (``SSLContext.keylog_filename``), the
upstream leg's by BoringSSL's key-log callback through this writer. Both append whole lines
to a file opened with O_APPEND, so lines from either side never interleave. Created 0600:
these are secrets.
"""

from __future__ import annotations

import os
import ssl


class KeyLog:
    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(self, line: str) -> None:
        os.write(self._fd, (line.rstrip("\n") + "\n").encode("ascii", "replace"))

    def attach(self, context: ssl.SSLContext) -> ssl.SSLContext:
        """Make a (possibly shared, cached) server context log its secrets here too."""
        if context.keylog_filename != self.path:
            context.keylog_filename = self.path
        return context

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
