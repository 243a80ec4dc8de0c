"""Start a real ``mirror run`` process for tests and read where it listens.

``running_proxy(workdir, modes=("http", "socks5"), extra=[...])`` yields a ``RunningProxy``
with the port per mode, the CA certificate clients must trust and the capture store path;
the process is stopped with SIGTERM at the end (it must exit 0) and killed if it hangs.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class RunningProxy:
    process: subprocess.Popen
    ports: dict[str, int]
    ca_cert: Path
    store: Path
    log: Path
    lines: list[str] = field(default_factory=list)

    def url(self, mode: str = "http", host: str = "127.0.0.1") -> str:
        scheme = {"http": "http", "socks5": "socks5h"}[mode]
        return f"{scheme}://{host}:{self.ports[mode]}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def read_start_lines(proc: subprocess.Popen, log: Path, modes) -> tuple[dict[str, int], Path | None, list[str]]:
    """`mirror run`'s start-up lines up to ``captures:``: (port per mode, CA path, lines).
    The process is killed, and AssertionError raised, when a mode's port is missing."""
    ports: dict[str, int] = {}
    lines = []
    deadline = time.monotonic() + 30
    ca_cert = None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = re.match(r"mirror (\w+) proxy listening on .*:(\d+)$", line.strip())
        if match:
            ports[match.group(1)] = int(match.group(2))
        match = re.match(r"CA certificate: (\S+)", line)
        if match:
            ca_cert = Path(match.group(1))
        if line.startswith("captures:"):
            break
    if len(ports) != len(modes) or ca_cert is None:
        proc.kill()
        proc.wait(10)
        raise AssertionError(f"mirror run did not start: {lines!r} {log.read_text()!r}")
    return ports, ca_cert, lines


@contextlib.contextmanager
def running_proxy(workdir: Path, modes=("http", "socks5"), extra=(), env=None):
    workdir.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "mirror", "run", "-v"]
    for mode in modes:
        args += ["--mode", mode, "--listen", f"{'0.0.0.0' if mode == 'transparent' else '127.0.0.1'}:0"]
    store = workdir / "captures.sqlite3"
    args += ["--ca-dir", str(workdir / "proxy-ca"), "--store", str(store), *extra]
    log = workdir / "proxy.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log_file, text=True, env=env)
    try:
        ports, ca_cert, lines = read_start_lines(proc, log, modes)
        yield RunningProxy(proc, ports, ca_cert, store, log, lines)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def start_proxy(workdir: Path, store: str, extra=()) -> tuple[subprocess.Popen, int, list[str]]:
    """`mirror run --mode http` on a free loopback port, storing to ``store`` (a path or a
    URL), left for the caller to stop or kill; (process, port, start-up lines)."""
    workdir.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "mirror", "run", "--mode", "http", "--listen", "127.0.0.1:0",
            "--ca-dir", str(workdir / "ca"), "--store", store, *extra]
    log = workdir / "proxy.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log_file, text=True)
    ports, _, lines = read_start_lines(proc, log, ["http"])
    return proc, ports["http"], lines


def transparent_proxy_in(bed, port: int = 8081, extra=()):
    """`mirror run --mode transparent` in a test bed's gateway namespace (tests/netbed.py),
    trusting the bed's echo CA upstream; returns (process, store path, proxy CA path)."""
    echo_ca = bed.workdir / "echo-ca" / "ca.pem"
    store = bed.workdir / "captures.sqlite3"
    with open(bed.workdir / "proxy.log", "wb") as log:
        proc = bed.python("gateway", [
            "-m", "mirror", "run", "-v", "--mode", "transparent", "--listen", f"[::]:{port}",
            "--ca-dir", str(bed.workdir / "proxy-ca"), "--store", str(store),
            "--upstream-ca", str(echo_ca), *extra], stdout=subprocess.PIPE, stderr=log, text=True)
    bed.wait_listening("gateway", port, proc=proc)
    return proc, store, bed.workdir / "proxy-ca" / "ca.pem"
