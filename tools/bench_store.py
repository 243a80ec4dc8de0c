"""Benchmark of the capture store's path: CPU and memory per stored connection, SQLite against
PostgreSQL (and no store at all, for the proxy's own share).

For each store a fresh ``mirror run --mode http`` is started in front of ``mirror echo`` (a TLS
origin, on loopback); ``--connections`` new TLS connections (CONNECT, handshake, one GET,
close), ``--concurrency`` at a time, go through it from a small asyncio client here. Then:

* the store process's CPU time (user + system, /proc/PID/stat) per record, its peak resident
  memory (VmHWM) and its resident memory at the end (VmRSS);
* the proxy process's CPU time per connection (the pickling and hand-over of each record is
  part of it; compare with ``none``);
* with PostgreSQL, the CPU time of the server's processes (the whole temporary cluster, which
  serves nothing else) per record;
* connections per second through the proxy, and the records found in the store afterwards.
  The rate is bounded by the Python client sharing the machine and by the order of the runs
  (the first pays for warming the origin): it is context, not a comparison of the stores.

PostgreSQL is Debian's postgresql 15 (``/usr/lib/postgresql/15/bin``, or ``--pg-bin``): a
temporary cluster (initdb, trust authentication, loopback, a free port), run as the
``postgres`` user when we are root, removed at the end.

    python3 tools/bench_store.py [--connections 2000] [--concurrency 10] [--stores sqlite,postgresql,none]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pwd
import re
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAME = "echo.test"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS        # utime + stime


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def children_running(pid: int, marker: bytes) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if ppid == pid and marker in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return found


def pids_of_user_command(name: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TemporaryPostgres:
    """initdb + pg_ctl in a temporary directory; ``url`` of its ``postgres`` database."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="mirror-bench-pg-"))
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            entry = pwd.getpwnam("postgres")
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self.port = free_port()
        self._run([str(bin_dir / "initdb"), "-D", str(self.dir / "data"), "-A", "trust", "-U",
                   "postgres", "-E", "UTF8", "--no-sync"])
        self._run([str(bin_dir / "pg_ctl"), "-D", str(self.dir / "data"), "-l",
                   str(self.dir / "log"), "-w", "-o", f"-p {self.port} -h 127.0.0.1 -k {self.dir}",
                   "start"])
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, args: list[str]) -> None:
        if self.as_postgres:
            args = ["runuser", "-u", "postgres", "--", *args]
        subprocess.run(args, check=True, capture_output=True, cwd=self.dir, timeout=120)

    def cpu_seconds(self) -> float:
        data = str(self.dir / "data").encode()
        total = 0.0
        for pid in pids_of_user_command("postgres"):
            try:
                if data in Path(f"/proc/{pid}/cmdline").read_bytes() or self._in_cluster(pid):
                    total += cpu_seconds(pid)
            except OSError:
                continue
        return total

    def _in_cluster(self, pid: int) -> bool:
        """Backends carry no data directory on their command line: their parent does."""
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            return str(self.dir / "data").encode() in Path(f"/proc/{ppid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return False

    def count(self) -> int:
        import psycopg

        with psycopg.connect(self.url) as connection:
            return connection.execute("SELECT count(*) FROM captures").fetchone()[0]

    def close(self) -> None:
        try:
            self._run([str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-w", "-m",
                       "immediate", "stop"])
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def start(args: list[str], pattern: str, log: Path) -> tuple[subprocess.Popen, list[str]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                                     os.environ.get("PYTHONPATH")]))}
    with open(log, "wb") as errors:
        proc = subprocess.Popen([sys.executable, "-m", "mirror", *args], stdout=subprocess.PIPE,
                                stderr=errors, text=True, env=env)
    lines = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if re.search(pattern, line):
            return proc, lines
    proc.kill()
    raise SystemExit(f"mirror {args[0]} did not start: {lines} {log.read_text()}")


async def one_connection(proxy_port: int, origin_port: int, context: ssl.SSLContext) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
    try:
        writer.write(f"CONNECT {NAME}:{origin_port} HTTP/1.1\r\nHost: {NAME}:{origin_port}\r\n\r\n"
                     .encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head)
        await writer.start_tls(context, server_hostname=NAME)
        writer.write(f"GET / HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode())
        await reader.read()                         # until the end of the connection
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ssl.SSLError, ConnectionError):
            pass


async def drive(proxy_port: int, origin_port: int, ca: Path, count: int, concurrency: int) -> int:
    context = ssl.create_default_context(cafile=str(ca))
    failures = 0
    queue = iter(range(count))

    async def client() -> None:
        nonlocal failures
        for _ in queue:
            try:
                await asyncio.wait_for(one_connection(proxy_port, origin_port, context), 30)
            except (TimeoutError, OSError, RuntimeError, ssl.SSLError, asyncio.IncompleteReadError):
                failures += 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return failures


def measure(store: str, work: Path, origin_port: int, echo_ca: Path, args, pg) -> dict:
    name = "none" if store == "none" else store
    spec = {"sqlite": str(work / f"{name}.sqlite3"), "postgresql": pg.url if pg else None,
            "none": None}[store]
    run_args = ["run", "--mode", "http", "--listen", "127.0.0.1:0", "--ca-dir", str(work / "ca"),
                "--upstream-ca", str(echo_ca), "--resolve", f"{NAME}:{origin_port}:127.0.0.1",
                "--no-syn-rewrite"]
    run_args += ["--store", spec] if spec else ["--no-store"]
    proxy, lines = start(run_args, r"^captures:", work / f"proxy-{name}.log")
    try:
        port = int(next(re.search(r":(\d+)$", line.strip()).group(1) for line in lines
                        if "proxy listening" in line))
        store_pid = (children_running(proxy.pid, b"store_process") or [None])[0]
        # warm-up: code loaded, the leaf minted, the plan cached
        asyncio.run(drive(port, origin_port, work / "ca" / "ca.pem", 20, 2))
        time.sleep(0.5)
        before = {"proxy": cpu_seconds(proxy.pid),
                  "store": cpu_seconds(store_pid) if store_pid else 0.0,
                  "pg": pg.cpu_seconds() if pg and store == "postgresql" else 0.0}
        started = time.monotonic()
        failures = asyncio.run(drive(port, origin_port, work / "ca" / "ca.pem",
                                     args.connections, args.concurrency))
        wall = time.monotonic() - started
        time.sleep(1.0)                     # the last batch committed
        after = {"proxy": cpu_seconds(proxy.pid),
                 "store": cpu_seconds(store_pid) if store_pid else 0.0,
                 "pg": pg.cpu_seconds() if pg and store == "postgresql" else 0.0}
        memory = ({"store_rss_kib": status_kib(store_pid, "VmRSS"),
                   "store_peak_kib": status_kib(store_pid, "VmHWM")} if store_pid else {})
        memory["proxy_rss_kib"] = status_kib(proxy.pid, "VmRSS")
    finally:
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(60)
    done = args.connections - failures
    records = None
    if store == "sqlite":
        with sqlite3.connect(spec) as db:
            records = db.execute("SELECT count(*) FROM captures").fetchone()[0] - 20
    elif store == "postgresql":
        records = pg.count() - 20
        with __import__("psycopg").connect(pg.url, autocommit=True) as connection:
            connection.execute("DROP TABLE captures; DROP TABLE mirror_schema")
    per = max(done, 1)
    return {"store": store, "connections": done, "failures": failures, "records": records,
            "conn_per_s": round(done / wall, 1),
            "proxy_cpu_ms_per_conn": round(1000 * (after["proxy"] - before["proxy"]) / per, 3),
            "store_cpu_ms_per_record": round(1000 * (after["store"] - before["store"]) / per, 3),
            "postgres_cpu_ms_per_record": round(1000 * (after["pg"] - before["pg"]) / per, 3),
            **memory}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--stores", default="sqlite,postgresql,none")
    parser.add_argument("--pg-bin", type=Path, default=Path("/usr/lib/postgresql/15/bin"))
    parser.add_argument("--json", action="store_true", help="Print the results as JSON.")
    args = parser.parse_args()
    stores = [s for s in args.stores.split(",") if s]
    work = Path(tempfile.mkdtemp(prefix="mirror-bench-store-"))
    pg = None
    echo = None
    try:
        if "postgresql" in stores:
            if not (args.pg_bin / "initdb").exists():
                raise SystemExit(f"no PostgreSQL in {args.pg_bin} (apt-get install postgresql)")
            pg = TemporaryPostgres(args.pg_bin)
        echo, lines = start(["echo", "--listen", "127.0.0.1:0", "--ca-dir", str(work / "echo-ca")],
                            r":(\d+)/", work / "echo.log")
        origin_port = int(re.search(r":(\d+)/", lines[-1]).group(1))
        results = [measure(store, work, origin_port, work / "echo-ca" / "ca.pem", args, pg)
                   for store in stores]
    finally:
        if echo is not None:
            echo.send_signal(signal.SIGTERM)
            echo.wait(30)
        if pg is not None:
            pg.close()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    columns = list(results[0])
    for row in results:
        columns += [c for c in row if c not in columns]
    print("  ".join(columns))
    for row in results:
        print("  ".join(str(row.get(c, "")) for c in columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
