"""An upstream proxy for tests: pproxy (a well-known Python HTTP/SOCKS5 proxy from PyPI),
started on a free loopback port with the listen spec given (``{port}`` filled in), its log
kept in the work directory."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path

PPROXY = ("import sys; sys.modules['uvloop'] = None; sys.argv[0] = 'pproxy'; "
          "from pproxy.server import main; main()")   # pproxy predates uvloop 0.21's loop rules


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the upstream proxy exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listening on {port}")


@contextlib.contextmanager
def pproxy(workdir: Path, listen: str, *extra: str):
    port = free_port()
    log = workdir / f"pproxy-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", PPROXY, "-v", "--auth", "0",
                                 "-l", listen.format(port=port), *extra],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_listening(port, proc)
        yield {"port": port, "log": log}
    finally:
        proc.terminate()
        proc.wait(10)
