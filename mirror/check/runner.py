"""Run `mirror check`: an echo server and a proxy on loopback, each client direct and through the
proxy, a verdict per field, a score.

Both servers are the real ones (`mirror echo`, `mirror run --mode http`) in child processes
with throw-away CAs and store; the score is the share of field comparisons that came out
"same" (a difference the proxy declared beforehand counts as not same, but is not a failure).
"""

from __future__ import annotations

import contextlib
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mirror.check.clients import ClientError, Target, fetch
from mirror.check.compare import Verdict, judge
from mirror.record.capture import CaptureRecord

NAME = "check.mirror.test"


class CheckError(RuntimeError):
    """The echo server or the proxy could not be started."""


@dataclass
class ClientResult:
    client: str
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    error: str | None = None

    @property
    def same(self) -> int:
        return sum(v.exact for v in self.verdicts.values())


@dataclass
class CheckReport:
    results: list[ClientResult]

    @property
    def score(self) -> float:
        total = sum(len(r.verdicts) for r in self.results) + sum(
            1 for r in self.results if r.error)
        return sum(r.same for r in self.results) / total if total else 0.0

    @property
    def failed(self) -> list[str]:
        return [r.client for r in self.results
                if r.error or any(not v.ok for v in r.verdicts.values())]


def _start(argv: list[str], pattern: str, what: str) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None  # stdout=PIPE
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if re.search(pattern, line):
            return proc, lines
    proc.kill()
    raise CheckError(f"{what} did not start: {''.join(lines)!r}")


def _port(lines: list[str], pattern: str, what: str) -> int:
    """The port (the first group of ``pattern``) in the first of ``lines`` that matches."""
    for line in lines:
        match = re.search(pattern, line)
        if match:
            return int(match.group(1))
    raise CheckError(f"{what} did not say its port: {''.join(lines)!r}")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def _servers(workdir: Path, tls_engine: str = "auto") -> Iterator[tuple[Target, Path]]:
    mirror = [sys.executable, "-m", "mirror"]
    echo, lines = _start([*mirror, "echo", "--listen", "127.0.0.1:0", "--ca-dir",
                          str(workdir / "echo-ca")], r"listening on https://", "the echo server")
    try:
        port = _port(lines, r"listening on https://\S*:(\d+)/", "the echo server")
        store = workdir / "captures.sqlite3"
        proxy, lines = _start([*mirror, "run", "--mode", "http", "--listen", "127.0.0.1:0",
                               "--ca-dir", str(workdir / "proxy-ca"), "--store", str(store),
                               "--upstream-ca", str(workdir / "echo-ca" / "ca.pem"),
                               "--resolve", f"{NAME}:{port}:127.0.0.1",
                               "--tls-engine", tls_engine],
                              r"^captures:", "the proxy")
        try:
            proxy_port = _port(lines, r"proxy listening on .*:(\d+)$", "the proxy")
            yield Target(NAME, port, str(workdir / "echo-ca" / "ca.pem"),
                         f"http://127.0.0.1:{proxy_port}", str(workdir / "proxy-ca" / "ca.pem")), store
        finally:
            _stop(proxy)
    finally:
        _stop(echo)


def _sent_ja4_o(record: CaptureRecord) -> str | None:
    """JA4_o of the hello the proxy wrote upstream on that connection, as it measured it."""
    tls = record.emitted.tls if record.emitted is not None else None
    hello = tls.hello if tls is not None else None
    return hello.ja4_o if hello is not None else None


def capture_after(store: Path, after: int, server_ja4_o: str | None = None,
                  timeout: float = 10.0, grace: float = 3.0) -> CaptureRecord:
    """The proxy's capture of the connection the server's report came from, among those made
    for the echo's name after capture ``after``. A browser may open more than one connection
    (Chromium does, each with its own extension order), and a capture is written when its
    connection ends, so the first is not always the one that carried the request: the capture
    whose hello as written upstream has the JA4_o the server saw (``server_ja4_o``) is the
    one; without such a capture within ``grace`` seconds of the first, the first."""
    import json

    deadline = time.monotonic() + timeout
    first_seen: float | None = None
    while time.monotonic() < deadline:
        records: list[CaptureRecord] = []
        if store.exists():
            with contextlib.closing(sqlite3.connect(store)) as db:
                rows = db.execute("SELECT record FROM captures WHERE id > ? AND sni = ? "
                                  "ORDER BY id", (after, NAME)).fetchall()
            records = [CaptureRecord.from_stored(json.loads(row[0])) for row in rows]
        for record in records:
            if server_ja4_o is not None and _sent_ja4_o(record) == server_ja4_o:
                return record
        if records:
            first_seen = time.monotonic() if first_seen is None else first_seen
            if server_ja4_o is None or time.monotonic() - first_seen >= grace:
                return records[0]
        time.sleep(0.1)
    raise ClientError("the proxy recorded no capture for the connection")


def _last_id(store: Path) -> int:
    if not store.exists():
        return 0
    with contextlib.closing(sqlite3.connect(store)) as db:
        return db.execute("SELECT COALESCE(MAX(id), 0) FROM captures").fetchone()[0]


def run_check(clients: list[str], progress: Callable[[str], None] = lambda _: None,
              tls_engine: str = "auto") -> CheckReport:
    results = []
    with tempfile.TemporaryDirectory(prefix="mirror-check-") as tmp, _servers(Path(tmp), tls_engine) as (
            target, store):
        for client in clients:
            result = ClientResult(client)
            try:
                progress(f"{client}: direct")
                direct = fetch(client, target, via_proxy=False)
                before = _last_id(store)
                progress(f"{client}: through the proxy")
                proxied = fetch(client, target, via_proxy=True)
                capture = capture_after(store, before, proxied.get("tls", {}).get("ja4_o"))
                result.verdicts = judge(direct, proxied, capture)
            except (ClientError, KeyError) as error:
                result.error = str(error)
            results.append(result)
    return CheckReport(results)
