"""Benchmark: mirror against a direct connection and against mitmproxy, as a reverse proxy in front
of nginx, under h2load; one command, it installs what it lacks.

What it measures
----------------
Three paths to the same origin, each over TLS 1.3 with SNI ``bench.test``:

* ``direct``     h2load -> nginx
* ``mirror``     h2load -> ``mirror run --mode reverse:https://bench.test:PORT`` -> nginx
                 (mirror verifies nginx's certificate with the run's own CA; default options
                 otherwise: a capture record per connection in a store of its own, SYN
                 rewriting on when run as root; ``--no-store`` turns the store off)
* ``mitmproxy``  h2load -> ``mitmdump --mode reverse:https://127.0.0.1:PORT`` -> nginx, quiet
                 (``-q``, ``flow_detail=0``, no flow file), ``keep_host_header`` so that the
                 client's SNI and Host go upstream like mirror's, and nginx's certificate checked
                 against the run's CA (``ssl_verify_upstream_trusted_ca``), like mirror's.

The origin is Debian's nginx, started here as a non-daemon child with its own configuration in a
temporary directory: TLS 1.3 only, HTTP/1.1 and HTTP/2 (ALPN), a 1 KiB and a 1 MiB file,
``access_log off``, ``keepalive_requests`` 1e6, and ``worker_processes 1``: on a 2-core machine
the load generator (h2load, one thread), nginx (one worker) and the proxy share the cores, and one
nginx worker leaves the proxy a fair part of them. Every figure is therefore "on this machine,
with these three programs sharing it", not a proxy's throughput in isolation.

Scenarios (h2load, 10 connections unless said)
----------------------------------------------
* ``h1-1k``       HTTP/1.1 keep-alive, 1 KiB body (``--h1 -c 10``): requests/s, mean and p99
                  latency ("time for request"; the p99 comes from h2load's ``--log-file``, the
                  third column of which is the microseconds until the end of each response).
* ``h2-1k``       HTTP/2, 10 connections x 10 streams (``-c 10 -m 10``): the same three figures.
* ``newconn-h1``  a new TCP + TLS connection for every request, HTTP/1.1: connections/s.
* ``newconn-h2``  the same over HTTP/2 (connection, SETTINGS exchange, one stream).
                  Both use h2load's rate mode (``-r R --rate-period 50ms -c N -n N``): N
                  connections, each a new client making one request, started R per 50 ms. Why
                  not h2load's closed loop (``--h1 -H "Connection: close"``): h2load then resumes
                  its TLS session on every reconnection (nginx's log showed 1 990 of 2 000
                  resumed), which measures PSK resumption, not handshakes, and HTTP/2 has no
                  such loop at all (h2load does not reconnect after a GOAWAY). In rate mode every
                  client is new, so each connection is a full handshake on each leg. The offered
                  rate: calibration raises it by half while the path keeps up, the best rate seen
                  is its capacity, and the measured runs offer 1.2x that. Not more: past its
                  accept queue a proxy's kernel drops SYNs and a 1 s SYN retransmission then
                  weighs on a short run (seen with mirror at 1.65x: 574 listen-queue overflows
                  in a 3 s run); the kernel's ListenOverflows / TCPSynRetrans counters are
                  recorded per run and reported when not zero. A run that kept up with the
                  offered rate is flagged ``≥`` (a lower bound) and the next run offers 1.3x
                  more.
* ``h1-1m``       HTTP/1.1 keep-alive, 1 MiB body: MiB/s of response bodies (h2load's "data"
                  bytes over its "finished in" time).
* ``h2-1m``       HTTP/2, 10 x 10 streams, 1 MiB body: MiB/s.
* ``idle``        2 000 TLS connections (a small asyncio client here, SNI bench.test, ALPN
                  http/1.1) opened through each proxy and held: the proxy's VmRSS before and after
                  (/proc/PID/status, summed over its processes) gives KiB per held connection.
                  Both proxies open their upstream connection at handshake time (mirror: upstream
                  first; mitmproxy: ``connection_strategy=eager``, its default): the number of
                  connections nginx then holds is checked and reported. Each idle run has a
                  proxy process of its own, started for it (20 connections opened and closed
                  first, to load code and make the leaf certificate), so that memory freed by
                  the earlier scenarios cannot absorb the connections. Not run for ``direct``.
* ``workers:h1-1k``, ``workers:h2-1k``, ``workers:newconn-h1``  mirror with ``--workers 1``
                  against ``--workers 2`` (only when ``mirror run --help`` has ``--workers``).
                  Each one's table also shows where each request's (connection's) CPU goes (the
                  proxy's processes, their event loops alone, nginx, h2load: user + system time
                  over the run, per request), how many cores were busy, and the ceiling the
                  machine puts on ``--workers 2``: its usable cores divided by the CPU one
                  request costs in all three. On a machine whose cores also run nginx and
                  h2load, that ceiling, not the proxy, bounds the 2/1 ratio. A last row shows
                  how each run's proxy CPU fell on the two workers (each worker process's
                  user + system time, its capture store left out; busiest first, e.g.
                  ``52/48``): h2load's fixed share of requests per connection makes a run last
                  as long as its busiest worker needs, so a 70/30 split bounds it to 1/0.7 =
                  1.4x one worker, whatever the ceiling.
* ``engines:newconn-h1``, ``engines:newconn-h2``, ``engines:h1-1m``, ``engines:h2-1m``
                  with ``--tls-engines replay,boringssl``: one mirror per upstream TLS engine
                  (``mirror run --tls-engine E``; paths ``mirror[replay]``,
                  ``mirror[boringssl]``), their runs interleaved like the other paths'. The
                  engines table gives conn/s or MiB/s, the proxy's CPU per connection (per MiB:
                  a 1 MiB response is one request), its event loops' alone, and the ratio of
                  the first engine to the second. h2load's own hello is OpenSSL's: mirror
                  replays it with ``replay``; ``boringssl`` rebuilds an approximation of it.
* CPU rows        for every 1 KiB scenario, each proxy's CPU per request (per connection for
                  ``newconn``): its processes' user + system time over the measured run (the
                  capture store's process included) divided by the requests, and the same for
                  its event loops alone (the main thread of each proxy process: a process can
                  give it one core at most).
* peak RSS        VmHWM of each proxy at the end of the suite (summed over a proxy's
                  processes; a forked worker's shared pages count in each).

How runs are sized and ordered
------------------------------
For every scenario and path calibration comes first (it also warms the path up): for
keep-alive scenarios the request count grows until a run lasts ``--seconds``/10 (at least
0.1 s); for ``newconn`` the offered rate grows by half, from 200/s, while the path keeps up (runs
of ``--seconds``/6, at least 0.25 s; the first rate it falls short of is offered once more, as
a short run can stall on one retransmitted SYN). The measured keep-alive runs then get N = (calibrated
rate x ``--seconds``) requests (at least 10 per stream; 2 for 1 MiB bodies), the newconn runs
N = capacity x ``--seconds`` connections, so that every path's run lasts about ``--seconds``
(3 s by default, 0.5 s with ``--quick``) however fast it is: N differs between paths, the
length of a run does not. The runs are interleaved: for each scenario, run 1 of direct, mirror,
mitmproxy, then run 2 of each... (``--runs``, default 2), so a slow moment of the machine hits
every path. The table shows the median and the min-max over the runs. The default suite (9
scenarios then, 2 runs; the idle one opens 2 x 2 x 2 000 TLS connections) took 3 min 20 s on 2
cores; ``--quick`` (0.5 s runs, 200 idle connections) about one minute, and
``--quick --only h1-1k --paths direct,mirror`` (the test suite's run) under 10 s.

A run counts only if h2load finished with every request succeeded (no failed, errored or timed
out request, only 2xx statuses, the expected ALPN protocol) and the path's server was still
running afterwards: the table leaves out any other run, marks the cell with ``!`` and lists the
failure below; the exit status is then 1. A server found dead before a run (on a shared machine
something else may end it) is started again and the restart is listed.

Every child (nginx, the proxies, h2load) runs in its own session and is ended by its process
group at the end, on an error or on Ctrl-C/SIGTERM; ports are free ones picked at run time (the
proxies' own ``:0`` where they print it); the temporary directory goes too (``--keep`` keeps
it: configurations and the proxies' logs).

Run from the repository root (as root on a machine without nginx or h2load: they are installed
with apt-get; mitmproxy goes into a venv under ~/.cache/mirror-bench)::

    python tools/bench.py                          # the full suite, table on stdout
    python tools/bench.py --quick                  # a smoke test
    python tools/bench.py --only h1-1k,idle --paths mirror,mitmproxy --runs 3 --json out.json
    python tools/bench.py --only engines --paths direct --tls-engines replay,boringssl
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOST = "bench.test"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mirror-bench"
PATHS = ("direct", "mirror", "mitmproxy")
RATE_PERIOD = 0.05          # seconds between two batches of new connections in rate mode


class BenchError(Exception):
    """A setup step failed; the message says which and what to do."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- tools: find or install ---------------------------------------------------------------------

def find_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/sbin", "/usr/local/sbin"):
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def ensure_debian_tools() -> tuple[str, str]:
    """nginx and h2load, installed with apt-get when missing (root only)."""
    wanted = {"nginx": "nginx", "h2load": "nghttp2-client"}
    missing = [package for tool, package in wanted.items() if not find_tool(tool)]
    if missing:
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise BenchError(f"missing {', '.join(missing)}: install them (as root: apt-get "
                             f"install {' '.join(missing)}) and run again")
        log(f"installing {' '.join(missing)} with apt-get...")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                       check=True, env=env, stdout=subprocess.DEVNULL)
    nginx, h2load = find_tool("nginx"), find_tool("h2load")
    if not nginx or not h2load:
        raise BenchError("nginx or h2load still missing after apt-get install")
    return nginx, h2load


def ensure_mitmdump(explicit: str | None) -> str:
    """mitmdump: --mitmdump, else the venv under ~/.cache/mirror-bench (created on first use)."""
    if explicit:
        return explicit
    venv = CACHE / "venv-mitmproxy"
    mitmdump = venv / "bin" / "mitmdump"
    if mitmdump.exists() and subprocess.run([str(mitmdump), "--version"], capture_output=True,
                                            timeout=60, check=False).returncode == 0:
        return str(mitmdump)
    log(f"installing mitmproxy into {venv} (pip)...")
    CACHE.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", "mitmproxy"], check=True)
    except subprocess.CalledProcessError as error:
        raise BenchError(f"could not install mitmproxy into {venv}: {error}") from None
    return str(mitmdump)


def version_of(args: list[str], pattern: str) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    match = re.search(pattern, done.stdout + done.stderr)
    return match.group(1) if match else "?"


def mirror_has_workers() -> bool:
    done = subprocess.run([sys.executable, "-m", "mirror", "run", "--help"], cwd=REPO,
                          env=mirror_env(), capture_output=True, text=True, timeout=120,
                          check=False)
    return "--workers" in done.stdout


def mirror_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


# --- child processes ----------------------------------------------------------------------------

class Children:
    """Every long-lived child we start, each in its own session (so a terminal's Ctrl-C reaches
    only us); ``stop_all`` ends each one's process group: SIGTERM, then SIGKILL after a grace."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, args: list[str], *, stdout: Path, stderr: Path, **kwargs):
        with open(stdout, "wb") as out, open(stderr, "wb") as err:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True, **kwargs)
        self.procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen, grace: float = 10.0) -> int | None:
        """End one child (SIGTERM to its group, SIGKILL after ``grace``); its exit status."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait(grace)
        except subprocess.TimeoutExpired:
            code = None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        self.procs = [(n, p) for n, p in self.procs if p is not proc]
        return code

    def stop_all(self, grace: float = 10.0) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for _, proc in reversed(self.procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
        for _, proc in self.procs:
            # the group too: a forked worker may outlive its parent
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        self.procs.clear()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, what: str, errlog: Path,
                  timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited ({proc.returncode}): {tail(errlog)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise BenchError(f"{what} did not listen on port {port} within {timeout:.0f} s: {tail(errlog)}")


def tail(path: Path, lines: int = 8) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (from /proc/*/stat)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def status_kib(pid: int, key: str) -> int:
    """Sum of /proc/PID/status ``key`` (VmRSS, VmHWM; kB) over pid and its descendants."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
    return total


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_ticks(pid: int) -> int:
    """User + system CPU used so far by pid and its descendants (those alive now), in clock
    ticks: whole numbers, so that differences of two readings carry no rounding."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by pid and its descendants (those alive now)."""
    return tree_cpu_ticks(pid) / CLOCK_TICKS


def loop_cpu_ticks(pid: int) -> int:
    """CPU clock ticks of the main thread (the event loop) of pid and of each descendant that
    is not a capture-store process: what bounds one proxy process, whatever its other threads
    (libcurl's, minting) and its store process add."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if b"store_process" in Path(f"/proc/{member}/cmdline").read_bytes():
                continue
            fields = Path(f"/proc/{member}/task/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total


def worker_cpu_seconds(pid: int) -> list[float]:
    """CPU seconds (all threads) of each proxy process under pid that serves connections: pid
    and its forked ``--workers``, not their capture-store processes; in pid order."""
    seconds = []
    for member in sorted(process_tree(pid)):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if b"store_process" in Path(f"/proc/{member}/cmdline").read_bytes():
                continue
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            seconds.append((int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return seconds


class CpuMeter:
    """CPU used between ``start`` and ``stop`` by a path's processes: the proxy's (all of them,
    and its event loops alone), nginx's and h2load's (reaped children of this process)."""

    def __init__(self, proxy_pid: int | None, nginx_pid: int) -> None:
        self.proxy_pid = proxy_pid
        self.nginx_pid = nginx_pid
        self.before: dict[str, float] = {}
        self.workers_before: list[float] = []

    def _now(self, *, loop_first: bool) -> dict[str, float]:
        """One reading, in seconds. The proxy's and its loops' are taken in clock ticks and
        divided once, after the subtraction, so a loop that used all of the proxy's CPU reads
        exactly equal. The loop is read after the whole proxy at the start and before it at
        the end, so the loop's share of a run can never exceed the proxy's."""
        now: dict[str, float] = {"nginx": tree_cpu_seconds(self.nginx_pid),
                                 "h2load": reaped_children_cpu_seconds()}
        if self.proxy_pid:
            if loop_first:
                now["loop"] = loop_cpu_ticks(self.proxy_pid)
                now["proxy"] = tree_cpu_ticks(self.proxy_pid)
            else:
                now["proxy"] = tree_cpu_ticks(self.proxy_pid)
                now["loop"] = loop_cpu_ticks(self.proxy_pid)
        return now

    def start(self) -> None:
        self.before = self._now(loop_first=False)
        self.workers_before = worker_cpu_seconds(self.proxy_pid) if self.proxy_pid else []

    def stop(self, result: dict, count: int, unit: str) -> None:
        """Add ``cpu_us_per_<unit>`` (proxy, nginx, h2load), ``loop_us_per_<unit>`` (the
        proxy's event loops) and ``busy_cores`` to a successful run's result."""
        after = self._now(loop_first=True)
        used = {name: after[name] - self.before[name] for name in after}
        for name in ("proxy", "loop"):
            if name in used:
                used[name] /= CLOCK_TICKS
        loop = used.pop("loop", None)
        result[f"cpu_us_per_{unit}"] = {name: value / count * 1e6 for name, value in used.items()}
        if loop is not None:
            result[f"loop_us_per_{unit}"] = loop / count * 1e6
        result["busy_cores"] = sum(used.values()) / result["seconds"]
        workers_after = worker_cpu_seconds(self.proxy_pid) if self.proxy_pid else []
        if len(workers_after) == len(self.workers_before) > 1:
            result["worker_cpu_seconds"] = [after - before for after, before
                                            in zip(workers_after, self.workers_before, strict=True)]


def reaped_children_cpu_seconds() -> float:
    """CPU seconds of this process's children that have ended (h2load runs, here)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tcp_counters() -> dict[str, int]:
    """The kernel's listen-queue overflow and SYN retransmission counters (whole machine)."""
    try:
        lines = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines()
                 if line.startswith("TcpExt:")]
        table = dict(zip(lines[0][1:], map(int, lines[1][1:]), strict=True))
    except (OSError, IndexError, ValueError):
        return {}
    return {key: table.get(key, 0) for key in ("ListenOverflows", "ListenDrops", "TCPSynRetrans")}


def established_to(port: int) -> int:
    """Established TCP connections whose local port is ``port`` (the origin's accepted ones)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


# --- the origin and the proxies -----------------------------------------------------------------

NGINX_CONF = """\
# mirror bench origin (generated by tools/bench.py)
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp-body;
    proxy_temp_path {dir}/tmp-proxy;
    fastcgi_temp_path {dir}/tmp-fastcgi;
    uwsgi_temp_path {dir}/tmp-uwsgi;
    scgi_temp_path {dir}/tmp-scgi;
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} {listen_extra};{http2_line}
        server_name {host};
        ssl_certificate {dir}/origin-cert.pem;
        ssl_certificate_key {dir}/origin-key.pem;
        ssl_protocols TLSv1.3;
        root {dir}/www;
    }}
}}
"""


def nginx_version(nginx: str) -> tuple[int, ...]:
    text = version_of([nginx, "-v"], r"nginx/([\d.]+)")
    return tuple(int(part) for part in text.split(".")) if text != "?" else (0,)


@dataclass
class Target:
    """One path's entry point: where h2load connects, the CA that signs what it presents."""
    name: str
    port: int
    cafile: Path
    proc: subprocess.Popen | None = None      # the process whose memory is the path's (proxies)
    errlog: Path | None = None


class Bench:
    def __init__(self, args, work: Path, children: Children) -> None:
        self.args = args
        self.work = work
        self.children = children
        self.targets: dict[str, Target] = {}
        self.nginx_port = 0
        self.h2load_bin = ""
        self.mitmdump = ""
        self.nginx = ""
        self.restarts: dict[str, int] = {}
        self.notes: list[str] = []
        self.mirror_workers: int | None = None      # `--workers 1` when the option exists
        self.logseq = 0

    # origin
    def start_nginx(self, nginx: str) -> None:
        from mirror.ca import CertificateAuthority, LeafCache

        ca = CertificateAuthority.init(self.work / "origin-ca")
        leaf = LeafCache(ca).get(HOST)
        for name, pem in (("origin-cert.pem", leaf.cert_pem), ("origin-key.pem", leaf.key_pem)):
            (self.work / name).write_bytes(pem if isinstance(pem, bytes) else pem.encode())
        www = self.work / "www"
        www.mkdir()
        (www / "1k").write_bytes(os.urandom(1024))
        (www / "1m").write_bytes(os.urandom(1 << 20))
        for path in (self.work, www):            # nginx's workers may run as another user
            path.chmod(0o755)
        for path in www.iterdir():
            path.chmod(0o644)
        self.nginx_port = free_port()
        modern = nginx_version(nginx) >= (1, 25, 1)  # `http2 on;` appeared in 1.25.1
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nofile = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
        conf = NGINX_CONF.format(dir=self.work, port=self.nginx_port, host=HOST, nofile=nofile,
                                 connections=max(1024, nofile // 2),
                                 listen_extra="ssl" if modern else "ssl http2",
                                 http2_line="\n        http2 on;" if modern else "")
        (self.work / "nginx.conf").write_text(conf)
        self.nginx = nginx
        self.start_nginx_process("nginx")

    def start_nginx_process(self, name: str) -> None:
        errlog = self.work / f"{name}-error.log"
        proc = self.children.start(name, [self.nginx, "-p", str(self.work), "-c",
                                          str(self.work / "nginx.conf"), "-e", str(errlog)],
                                   stdout=self.work / f"{name}.out", stderr=errlog)
        wait_for_port(self.nginx_port, proc, name, errlog)
        self.targets["direct"] = Target(name, self.nginx_port, self.work / "origin-ca" / "ca.pem",
                                        proc, errlog)

    # mirror
    def start_mirror(self, name: str, workers: int | None, ca_dir: str = "mirror-ca",
                     engine: str | None = None) -> Target:
        out, err = self.work / f"{name}.out", self.work / f"{name}.err"
        args = [sys.executable, "-m", "mirror", "run",
                "--mode", f"reverse:https://{HOST}:{self.nginx_port}",
                "--listen", "127.0.0.1:0",
                "--upstream-ca", str(self.work / "origin-ca" / "ca.pem"),
                "--resolve", f"{HOST}:{self.nginx_port}:127.0.0.1",
                *(["--no-store"] if self.args.no_store else
                  ["--store", str(self.work / f"{name}-captures.sqlite3")]),
                "--ca-dir", str(self.work / ca_dir)]
        if workers is not None:
            args += ["--workers", str(workers)]
        engine = engine or self.args.tls_engine
        if engine is not None:
            args += ["--tls-engine", engine]
        proc = self.children.start(name, args, stdout=out, stderr=err, cwd=REPO, env=mirror_env())
        deadline, port, ca = time.monotonic() + 90, None, None
        while time.monotonic() < deadline:
            text = out.read_text(errors="replace")
            port_match = re.search(r"mirror reverse proxy listening on \S+:(\d+)", text)
            ca_match = re.search(r"CA certificate: (\S+)", text)
            if port_match and ca_match and "captures:" in text:
                port, ca = int(port_match.group(1)), Path(ca_match.group(1))
                break
            if proc.poll() is not None:
                raise BenchError(f"mirror exited ({proc.returncode}): {tail(err)} {tail(out)}")
            time.sleep(0.1)
        if port is None:
            raise BenchError(f"mirror did not start within 90 s: {tail(err)} {tail(out)}")
        wait_for_port(port, proc, name, err)
        return Target(name, port, ca, proc, err)

    # mitmproxy
    def start_mitmdump(self, name: str) -> Target:
        port = free_port()
        confdir = self.work / "mitmproxy-conf"
        out, err = self.work / f"{name}.out", self.work / f"{name}.err"
        args = [self.mitmdump, "--mode", f"reverse:https://127.0.0.1:{self.nginx_port}",
                "--listen-host", "127.0.0.1", "-p", str(port), "-q",
                "--set", "flow_detail=0", "--set", "keep_host_header=true",
                "--set", f"ssl_verify_upstream_trusted_ca={self.work / 'origin-ca' / 'ca.pem'}",
                "--set", f"confdir={confdir}"]
        proc = self.children.start(name, args, stdout=out, stderr=err)
        wait_for_port(port, proc, name, err, timeout=90)
        return Target(name, port, confdir / "mitmproxy-ca-cert.pem", proc, err)

    def exited(self, path: str) -> str | None:
        """Why a path's server is gone (None while it runs)."""
        target = self.targets[path]
        if target.proc is None or target.proc.poll() is None:
            return None
        return f"{path} exited (status {target.proc.returncode}): {tail(target.errlog, 2)[-300:]}"

    def revive(self, path: str, when: str) -> None:
        """Start the path's server again if it exited (something else on a shared machine may
        end it: status 0 is a SIGTERM/SIGINT), and say so in the notes."""
        gone = self.exited(path)
        if gone is None:
            return
        self.restarts[path] = self.restarts.get(path, 0) + 1
        if self.restarts[path] > 3:
            raise BenchError(f"{gone}; restarted 3 times already: giving up")
        self.notes.append(f"{gone.split(':')[0]} {when}; restarted"
                          + (" (status 0: a SIGTERM/SIGINT from outside this tool)"
                             if self.targets[path].proc.returncode == 0 else f": {gone}"))
        self.children.procs = [(n, p) for n, p in self.children.procs
                               if p is not self.targets[path].proc]
        name = f"{self.targets[path].name}-restart{self.restarts[path]}"
        if path == "direct":
            self.start_nginx_process(name)
        elif path == "mitmproxy":
            self.targets[path] = self.start_mitmdump(name)
        elif engine_of(path):
            self.targets[path] = self.start_mirror(name, self.mirror_workers,
                                                   engine=engine_of(path))
        else:
            self.targets[path] = self.start_mirror(
                name, 2 if path == "mirror-w2" else self.mirror_workers)

    # h2load
    def h2load(self, target: str, scenario: Scenario, n: int, *, rate: int | None = None,
               expected_seconds: float = 10.0) -> dict:
        port = self.targets[target].port
        self.logseq += 1
        logfile = self.work / f"h2load-{self.logseq}.tsv"
        args = [self.h2load_bin, f"--connect-to=127.0.0.1:{port}", f"https://{HOST}{scenario.url}",
                "-n", str(n)]
        if scenario.proto == "h1":
            args.append("--h1")
        if rate is not None:                       # newconn: N clients, one request each
            args += ["-c", str(n), "-r", str(rate), f"--rate-period={int(RATE_PERIOD * 1000)}ms"]
        else:
            args += ["-c", str(scenario.clients), "-m", str(scenario.streams),
                     f"--log-file={logfile}"]
        if self.args.verbose:
            log("  $ " + " ".join(args))
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            output, _ = proc.communicate(timeout=60 + 5 * expected_seconds)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            code = None
        finally:                                   # Ctrl-C too: never leave h2load behind
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        result = parse_h2load(output)
        result.update(command=args[1:], exit_code=code, n=n, rate_per_period=rate)
        problems = h2load_problems(result, n, scenario.proto, code)
        if logfile.exists():
            if not problems:
                times = log_request_times(logfile)
                if times:
                    result["log_requests"] = len(times)
                    result["p99_ms"] = percentile(times, 0.99) / 1000
                    result["log_mean_ms"] = statistics.fmean(times) / 1000
            logfile.unlink()
        result["problems"] = problems
        result["ok"] = not problems
        return result


# --- h2load output --------------------------------------------------------------------------------

UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def duration(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * UNITS[match.group(2)]


def parse_h2load(text: str) -> dict:
    out: dict = {"output_tail": text.strip().splitlines()[-12:]}
    if match := re.search(r"finished in ([\d.]+(?:us|ms|s)), ([\d.]+) req/s", text):
        out["seconds"] = duration(match.group(1))
        out["h2load_req_per_s"] = float(match.group(2))
    if match := re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                          r"(\d+) failed, (\d+) errored, (\d+) timeout", text):
        for key, value in zip(("total", "started", "done", "succeeded", "failed", "errored",
                               "timeout"), match.groups(), strict=True):
            out[key] = int(value)
    if match := re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text):
        out["status"] = dict(zip(("2xx", "3xx", "4xx", "5xx"), map(int, match.groups()), strict=True))
    if match := re.search(r"traffic: \S+ \((\d+)\) total, \S+ \((\d+)\) headers.*?, \S+ \((\d+)\) "
                          r"data", text):
        out["bytes_total"], out["bytes_headers"], out["bytes_data"] = map(int, match.groups())
    if match := re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", text):
        with contextlib.suppress(ValueError):
            low, high, mean, sd = (duration(v) for v in match.groups())
            out.update(min_ms=low * 1e3, max_ms=high * 1e3, mean_ms=mean * 1e3, sd_ms=sd * 1e3)
    if match := re.search(r"Application protocol: (\S+)", text):
        out["alpn"] = match.group(1)
    return out


def h2load_problems(result: dict, n: int, proto: str, code: int | None) -> list[str]:
    problems = []
    if code is None:
        problems.append("h2load timed out (killed)")
    elif code != 0:
        problems.append(f"h2load exit status {code}")
    if "total" not in result or "seconds" not in result:
        problems.append("no h2load summary: " + " | ".join(result.get("output_tail", [])[-3:]))
        return problems
    bad = {k: result[k] for k in ("failed", "errored", "timeout") if result[k]}
    if bad:
        problems.append(", ".join(f"{v} {k}" for k, v in bad.items()) + f" of {result['total']}")
    if result["succeeded"] != n:
        problems.append(f"{result['succeeded']} of {n} requests succeeded")
    status = result.get("status", {})
    if status.get("2xx") != result["succeeded"]:
        problems.append(f"status codes {status}")
    want = "http/1.1" if proto == "h1" else "h2"
    if result.get("alpn") != want:
        problems.append(f"ALPN {result.get('alpn')!r}, expected {want!r}")
    return problems


def log_request_times(path: Path) -> list[int]:
    """Microseconds until the end of each successful response (h2load --log-file column 3)."""
    times = []
    for line in path.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 3 and fields[1] != "-1":
            times.append(int(fields[2]))
    return times


def percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return float(ordered[max(0, math.ceil(q * len(ordered)) - 1)])


# --- scenarios -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Metric:
    key: str          # in a run's result
    label: str
    unit: str
    higher_is_better: bool
    digits: int


REQS = Metric("req_per_s", "req/s", "req/s", True, 0)
MEAN = Metric("mean_ms", "mean", "ms", False, 2)
P99 = Metric("p99_ms", "p99", "ms", False, 2)
CONNS = Metric("conn_per_s", "conn/s", "conn/s", True, 0)
MIBS = Metric("mib_per_s", "MiB/s", "MiB/s", True, 1)
IDLE = Metric("kib_per_conn", "KiB/conn", "KiB", False, 1)


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str                 # keepalive | newconn | idle
    proto: str = "h1"
    url: str = "/1k"
    clients: int = 10
    streams: int = 1
    metrics: tuple[Metric, ...] = ()
    paths: tuple[str, ...] = PATHS     # which paths run it (workers: mirror vs mirror-w2)


SCENARIOS = (
    Scenario("h1-1k", "keepalive", "h1", "/1k", metrics=(REQS, MEAN, P99)),
    Scenario("h2-1k", "keepalive", "h2", "/1k", streams=10, metrics=(REQS, MEAN, P99)),
    Scenario("newconn-h1", "newconn", "h1", "/1k", metrics=(CONNS,)),
    Scenario("newconn-h2", "newconn", "h2", "/1k", metrics=(CONNS,)),
    Scenario("h1-1m", "keepalive", "h1", "/1m", metrics=(MIBS,)),
    Scenario("h2-1m", "keepalive", "h2", "/1m", streams=10, metrics=(MIBS,)),
    Scenario("idle", "idle", metrics=(IDLE,), paths=("mirror", "mitmproxy")),
    Scenario("workers:h1-1k", "keepalive", "h1", "/1k", metrics=(REQS, MEAN, P99),
             paths=("mirror", "mirror-w2")),
    Scenario("workers:h2-1k", "keepalive", "h2", "/1k", streams=10, metrics=(REQS, MEAN, P99),
             paths=("mirror", "mirror-w2")),
    Scenario("workers:newconn-h1", "newconn", "h1", "/1k", metrics=(CONNS,),
             paths=("mirror", "mirror-w2")),
    # engines: one mirror per --tls-engines entry (paths "mirror[E]", set at run time)
    Scenario("engines:newconn-h1", "newconn", "h1", "/1k", metrics=(CONNS,), paths=()),
    Scenario("engines:newconn-h2", "newconn", "h2", "/1k", metrics=(CONNS,), paths=()),
    Scenario("engines:h1-1m", "keepalive", "h1", "/1m", metrics=(MIBS,), paths=()),
    Scenario("engines:h2-1m", "keepalive", "h2", "/1m", streams=10, metrics=(MIBS,), paths=()),
)
ENGINES = ("auto", "replay", "boringssl")


def engine_path(engine: str) -> str:
    return f"mirror[{engine}]"


def engine_of(path: str) -> str | None:
    """The engine of an engines path (``mirror[replay]`` -> ``replay``), else None."""
    match = re.fullmatch(r"mirror\[(\w+)\]", path)
    return match.group(1) if match else None


@dataclass
class Cell:
    calibration: dict = field(default_factory=dict)
    runs: list[dict] = field(default_factory=list)
    error: str | None = None          # calibration failed: no runs


def keepalive_metrics(result: dict, scenario: Scenario) -> dict:
    seconds = result["seconds"]
    return {"req_per_s": result["succeeded"] / seconds,
            "mean_ms": result.get("mean_ms"), "p99_ms": result.get("p99_ms"),
            "mib_per_s": result.get("bytes_data", 0) / (1 << 20) / seconds}


class Runner:
    def __init__(self, bench: Bench, args) -> None:
        self.bench = bench
        self.args = args
        self.seconds = args.seconds
        self.min_cal = max(0.1, args.seconds / 10)

    # keep-alive
    def calibrate_keepalive(self, scenario: Scenario, target: str) -> tuple[dict, int | None]:
        per = scenario.clients * scenario.streams
        big = scenario.url == "/1m"
        n = per * (1 if big else 50)
        tries = []
        for _ in range(5):
            result = self.bench.h2load(target, scenario, n)
            tries.append({"n": n, "ok": result["ok"], "seconds": result.get("seconds"),
                          "problems": result["problems"]})
            if not result["ok"]:
                return {"tries": tries}, None
            if result["seconds"] >= self.min_cal:
                break
            n = int(n * min(20.0, max(2.0, 1.5 * self.min_cal / max(result["seconds"], 1e-4))))
        rate = result["succeeded"] / result["seconds"]
        floor = per * (2 if big else 10)
        measured = max(floor, round(rate * self.seconds / per) * per)
        return {"tries": tries, "rate": rate, "n": measured}, measured

    def meter(self, target: str) -> CpuMeter:
        targets = self.bench.targets
        return CpuMeter(targets[target].proc.pid if target != "direct" else None,
                        targets["direct"].proc.pid)

    def run_keepalive(self, scenario: Scenario, target: str, n: int, rate: float) -> dict:
        meter = self.meter(target)
        meter.start()
        result = self.bench.h2load(target, scenario, n, expected_seconds=n / rate)
        if result["ok"]:
            result["metrics"] = keepalive_metrics(result, scenario)
            meter.stop(result, result["succeeded"], "request")
        return result

    # new connections
    def newconn_run(self, scenario: Scenario, target: str, offered: float, n: int) -> dict:
        per_period = max(1, math.ceil(offered * RATE_PERIOD))
        before = tcp_counters()
        meter = self.meter(target)
        meter.start()
        result = self.bench.h2load(target, scenario, n, rate=per_period,
                                   expected_seconds=n / max(1.0, offered / 4))
        if result["ok"]:
            meter.stop(result, result["succeeded"], "connection")
        after = tcp_counters()
        result["tcp"] = {key: after.get(key, 0) - before.get(key, 0) for key in after}
        result["offered_per_s"] = per_period / RATE_PERIOD
        if result["ok"]:
            achieved = result["succeeded"] / result["seconds"]
            result["metrics"] = {"conn_per_s": achieved}
            result["kept_up"] = achieved >= 0.95 * result["offered_per_s"]
        return result

    def calibrate_newconn(self, scenario: Scenario, target: str) -> tuple[dict, float | None]:
        """Raise the offered rate by half while the path keeps up (a rate it falls short of is
        tried once more, the first time); its capacity is the best rate seen. (Overload is
        avoided on purpose: past its accept queue a proxy drops SYNs, and a 1 s SYN
        retransmission then weighs on a short run.)"""
        offered, tries, best, retried = 200.0, [], 0.0, False
        cal_seconds = max(0.25, self.seconds / 6)
        for _ in range(10):
            n = max(40, int(offered * cal_seconds))
            result = self.newconn_run(scenario, target, offered, n)
            tries.append({"offered_per_s": result["offered_per_s"], "n": n, "ok": result["ok"],
                          "conn_per_s": result.get("metrics", {}).get("conn_per_s"),
                          "tcp": result["tcp"], "problems": result["problems"]})
            if not result["ok"]:
                return {"tries": tries}, None
            best = max(best, result["metrics"]["conn_per_s"])
            if result["metrics"]["conn_per_s"] < 0.9 * result["offered_per_s"]:
                if retried:
                    break
                retried = True           # a short run can stall once (a SYN retransmitted):
                continue                 # the same rate again before calling it the limit
            offered *= 1.5
        return {"tries": tries, "capacity": best}, best

    # idle connections
    def run_idle(self, path: str, index: int) -> dict:
        """On a fresh instance of the path's proxy (so that memory left by earlier scenarios
        cannot hide the connections' cost), started for this run and stopped after it."""
        bench = self.bench
        if path == "mitmproxy":
            target = bench.start_mitmdump(f"idle-mitmdump-{index}")
        else:
            target = bench.start_mirror(f"idle-mirror-{index}", bench.mirror_workers)
        try:
            result = asyncio.run(hold_idle(target, self.args.idle_connections, bench.nginx_port))
            result["peak_rss_kib"] = status_kib(target.proc.pid, "VmHWM")
            if target.proc.poll() is not None:
                result["problems"].append(f"exited during the run: {tail(target.errlog, 4)}")
                result["ok"] = False
        finally:
            bench.children.stop(target.proc)
        return result

    # one scenario: calibrate each path, then interleaved runs
    def scenario(self, scenario: Scenario, paths: list[str]) -> dict[str, Cell]:
        cells = {path: Cell() for path in paths}
        plan: dict[str, tuple] = {}
        started = time.monotonic()
        for path in {*paths, "direct"} & set(self.bench.targets):
            self.bench.revive(path, f"before {scenario.name}")
        if scenario.kind == "keepalive":
            for path in paths:
                if cells[path].error:
                    continue
                cells[path].calibration, n = self.calibrate_keepalive(scenario, path)
                if n is None and self.bench.exited(path):        # killed: once more
                    self.bench.revive(path, f"during {scenario.name} calibration")
                    cells[path].calibration, n = self.calibrate_keepalive(scenario, path)
                if n is None:
                    cells[path].error = "calibration failed: " + "; ".join(
                        cells[path].calibration["tries"][-1]["problems"])
                else:
                    plan[path] = (n, cells[path].calibration["rate"])
        elif scenario.kind == "newconn":
            for path in paths:
                if cells[path].error:
                    continue
                cells[path].calibration, capacity = self.calibrate_newconn(scenario, path)
                if capacity is None and self.bench.exited(path):        # killed: once more
                    self.bench.revive(path, f"during {scenario.name} calibration")
                    cells[path].calibration, capacity = self.calibrate_newconn(scenario, path)
                if capacity is None:
                    cells[path].error = "calibration failed: " + "; ".join(
                        cells[path].calibration["tries"][-1]["problems"])
                else:   # offered: 20 % above the capacity (see calibrate_newconn)
                    plan[path] = [1.2 * capacity, max(100, int(capacity * self.seconds))]
        else:
            plan = {path: () for path in paths}
        for index in range(self.args.runs):
            for path in paths:
                if path not in plan:
                    continue
                for revived in {path, "direct"} & set(self.bench.targets):
                    self.bench.revive(revived, f"before {scenario.name} run {index + 1}")
                if scenario.kind == "keepalive":
                    result = self.run_keepalive(scenario, path, *plan[path])
                elif scenario.kind == "newconn":
                    result = self.newconn_run(scenario, path, *plan[path])
                    if result.get("kept_up"):       # not saturated: offer more next time
                        plan[path][0] *= 1.3
                else:
                    result = self.run_idle(path, index + 1)
                if scenario.kind != "idle" and (gone := self.bench.exited(path)):
                    result["ok"] = False
                    result["problems"].append(f"exited during the run: {gone}")
                result["run"] = index + 1
                cells[path].runs.append(result)
                shown = ", ".join(f"{m.label} {fmt(result['metrics'].get(m.key), m.digits)}"
                                  for m in scenario.metrics) if result["ok"] else \
                    "FAILED: " + "; ".join(result["problems"])
                log(f"  {scenario.name} {path} run {index + 1}: {shown}")
        log(f"  ({scenario.name}: {time.monotonic() - started:.0f} s)")
        return cells


async def hold_idle(target: Target, count: int, origin_port: int) -> dict:
    """Open ``count`` TLS connections to the target, hold them, read the proxy's VmRSS."""
    pid = target.proc.pid
    context = ssl.create_default_context(cafile=str(target.cafile))
    context.set_alpn_protocols(["http/1.1"])
    gate = asyncio.Semaphore(64)
    writers, errors = [], []

    async def connect() -> None:
        async with gate:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(
                    "127.0.0.1", target.port, ssl=context, server_hostname=HOST), 30)
                writers.append(writer)
            except (OSError, ssl.SSLError, TimeoutError) as error:
                errors.append(f"{type(error).__name__}: {error}")

    # warm-up: the first connections load code, make the leaf certificate, fill caches
    baseline_upstream = established_to(origin_port)
    await asyncio.gather(*(connect() for _ in range(20)))
    for writer in writers:
        writer.transport.abort()
    writers.clear()
    if errors:
        return {"connections": count, "ok": False,
                "problems": [f"warm-up: {len(errors)} of 20 connections failed ({errors[0]})"]}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and established_to(origin_port) > baseline_upstream:
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    before = status_kib(pid, "VmRSS")

    started = time.perf_counter()
    try:
        await asyncio.gather(*(connect() for _ in range(count)))
        opened = time.perf_counter() - started
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            upstream = established_to(origin_port) - baseline_upstream
            if upstream >= len(writers):
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        upstream = established_to(origin_port) - baseline_upstream
        after = status_kib(pid, "VmRSS")
    finally:
        for writer in writers:
            writer.transport.abort()
    held = len(writers)
    deadline = time.monotonic() + 20            # let the proxy drop its upstream connections
    while time.monotonic() < deadline and established_to(origin_port) > baseline_upstream:
        await asyncio.sleep(0.2)
    problems = []
    if errors:
        problems.append(f"{len(errors)} of {count} connections failed (first: {errors[0]})")
    if upstream < held * 0.98:
        problems.append(f"only {upstream} upstream connections for {held} held")
    result = {"connections": count, "held": held, "upstream": upstream,
              "rss_before_kib": before, "rss_after_kib": after, "open_seconds": opened,
              "problems": problems, "ok": not problems}
    if held:
        result["metrics"] = {"kib_per_conn": (after - before) / held}
    return result


# --- output -------------------------------------------------------------------------------------

def fmt(value, digits: int) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def summary(cell: Cell | None, metric: Metric) -> tuple[float | None, str]:
    if cell is None:
        return None, ""
    if cell.error:
        return None, "FAILED"
    values = [run_value(r, metric.key) for r in cell.runs
              if r["ok"] and run_value(r, metric.key) is not None]
    bad = sum(1 for r in cell.runs if not r["ok"])
    flag = "!" if bad else ""
    if metric.key == "conn_per_s":
        flag += "≥" if any(r.get("kept_up") for r in cell.runs if r["ok"]) else ""
    if not values:
        return None, "FAILED" if bad else "-"
    middle = statistics.median(values)
    text = f"{fmt(middle, metric.digits)} ({fmt(min(values), metric.digits)}–" \
           f"{fmt(max(values), metric.digits)}){flag}"
    return middle, text


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else ""


def render_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in
                       enumerate(zip(headers, widths, strict=True)))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    return "\n".join(lines)


def main_table(results: dict, paths: list[str], peaks: dict) -> str:
    headers = ["scenario", *paths]
    if "mirror" in paths and "mitmproxy" in paths:
        headers.append("mirror/mitmproxy")
    if "mirror" in paths and "direct" in paths:
        headers.append("mirror/direct")
    rows = []
    for scenario in SCENARIOS:
        if scenario.name not in results or ":" in scenario.name:
            continue
        cells = results[scenario.name]
        cpu = proxy_cpu_metrics(scenario)
        for metric in scenario.metrics + cpu:
            row = [f"{scenario.name} {metric.label}" + ("" if metric.unit == metric.label
                                                         else f" ({metric.unit})")]
            medians = {}
            for path in paths:
                medians[path], text = summary(cells.get(path), metric)
                row.append(text or "—")
            if "mitmproxy" in paths and "mirror" in paths:
                row.append(ratio(medians.get("mirror"), medians.get("mitmproxy")))
            if "direct" in paths and "mirror" in paths:
                row.append(ratio(medians.get("mirror"), medians.get("direct")))
            if metric not in cpu or any(v is not None for v in medians.values()):
                rows.append(row)
    if peaks:
        row = ["peak RSS (MiB, VmHWM)"]
        for path in paths:
            value = peaks.get(path)
            row.append(f"{value / 1024:,.1f}" if value else "—")
        if "mitmproxy" in paths and "mirror" in paths:
            row.append(ratio(peaks.get("mirror"), peaks.get("mitmproxy")))
        if "direct" in paths and "mirror" in paths:
            row.append("")
        rows.append(row)
    return render_table(headers, rows)


def proxy_cpu_metrics(scenario: Scenario) -> tuple[Metric, ...]:
    """The proxy's CPU per request (per connection for newconn): all its processes, and its
    event loop alone (the main thread: what one process can spend at most a core on)."""
    if scenario.kind not in ("keepalive", "newconn") or scenario.url != "/1k":
        return ()
    unit = "request" if scenario.kind == "keepalive" else "connection"
    short = SHORT_UNIT[unit]
    return (Metric(f"cpu_us_per_{unit}.proxy", f"proxy CPU/{short}", "µs", False, 1),
            Metric(f"loop_us_per_{unit}", f"event loop CPU/{short}", "µs", False, 1))


SHORT_UNIT = {"request": "req", "connection": "conn"}


def run_value(run: dict, key: str) -> float | None:
    """A run's figure: ``key`` in its metrics, or a dotted path into the run itself."""
    if key in run.get("metrics", {}):
        return run["metrics"][key]
    value = run
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def workers_table(results: dict, peaks: dict) -> str | None:
    rows = []
    for scenario in SCENARIOS:
        if not scenario.name.startswith("workers:") or scenario.name not in results:
            continue
        cells = results[scenario.name]
        name = scenario.name.split(":", 1)[1]
        for metric in scenario.metrics:
            one, one_text = summary(cells.get("mirror"), metric)
            two, two_text = summary(cells.get("mirror-w2"), metric)
            rows.append([f"{name} {metric.label}", one_text or "—", two_text or "—",
                         ratio(two, one)])
        rows += cpu_rows(name, scenario, cells.get("mirror"), cells.get("mirror-w2"))
    if not rows:
        return None
    if peaks.get("mirror-w2"):
        rows.append(["peak RSS (MiB, VmHWM, summed)", f"{peaks['mirror'] / 1024:,.1f}",
                     f"{peaks['mirror-w2'] / 1024:,.1f}", ratio(peaks["mirror-w2"], peaks["mirror"])])
    return render_table(["mirror workers", "--workers 1", "--workers 2", "2/1"], rows)


def engine_metrics(scenario: Scenario) -> tuple[Metric, ...]:
    """An engines scenario's figures: its rate, then the proxy's CPU per connection (newconn) or
    per MiB (a 1 MiB response is one request), all its processes and its event loops alone."""
    unit, short = ("connection", "conn") if scenario.kind == "newconn" else ("request", "MiB")
    return (*scenario.metrics,
            Metric(f"cpu_us_per_{unit}.proxy", f"proxy CPU/{short}", "µs", False, 1),
            Metric(f"loop_us_per_{unit}", f"event loop CPU/{short}", "µs", False, 1))


def engines_table(results: dict, engines: list[str]) -> str | None:
    """The engines side by side: a row per scenario and figure, a column per engine, and the
    first engine's figure over the second's (below 1: the first uses less CPU, or is slower)."""
    paths = [engine_path(engine) for engine in engines]
    rows = []
    for scenario in SCENARIOS:
        if not scenario.name.startswith("engines:") or scenario.name not in results:
            continue
        cells = results[scenario.name]
        name = scenario.name.split(":", 1)[1]
        for metric in engine_metrics(scenario):
            values, texts = zip(*(summary(cells.get(path), metric) for path in paths),
                                strict=True)
            row = [f"{name} {metric.label}" + ("" if metric.unit == metric.label
                                               else f" ({metric.unit})"),
                   *(text or "—" for text in texts)]
            if len(paths) > 1:
                row.append(ratio(values[0], values[1]))
            rows.append(row)
    if not rows:
        return None
    headers = ["mirror --tls-engine", *engines]
    if len(paths) > 1:
        headers.append(f"{engines[0]}/{engines[1]}")
    return render_table(headers, rows)


def cpu_rows(name: str, scenario: Scenario, one: Cell | None, two: Cell | None) -> list[list[str]]:
    """Where each request's (connection's) CPU goes, and the most that --workers 2 can give on
    this machine: all its cores divided by the CPU one request costs (proxy, nginx and h2load
    together), against what one worker did."""
    unit = "request" if scenario.kind == "keepalive" else "connection"
    key = f"cpu_us_per_{unit}"

    def medians(cell: Cell | None) -> dict | None:
        runs = [r for r in (cell.runs if cell else []) if r["ok"] and key in r]
        if not runs:
            return None
        parts = runs[0][key]
        made = {k: statistics.median(r[key][k] for r in runs) for k in parts}
        if all(f"loop_us_per_{unit}" in r for r in runs):
            made["loop"] = statistics.median(r[f"loop_us_per_{unit}"] for r in runs)
        made["busy"] = statistics.median(r["busy_cores"] for r in runs)
        return made

    a, b = medians(one), medians(two)
    if a is None or b is None:
        return []
    label = f"{name} CPU/{SHORT_UNIT[unit]} (µs)"
    rows = [[f"{label}: {part}", f"{a[part]:.1f}", f"{b[part]:.1f}", ratio(b[part], a[part])]
            for part in ("proxy", "nginx", "h2load")]
    if "loop" in a and "loop" in b:
        rows.insert(1, [f"{label}: proxy event loops", f"{a['loop']:.1f}", f"{b['loop']:.1f}",
                        ratio(b["loop"], a["loop"])])
    cores = len(os.sched_getaffinity(0))
    rows.append([f"{name} busy cores (of {cores})", f"{a['busy']:.2f}",
                 f"{b['busy']:.2f}", ""])
    split = worker_split(two)
    if split:
        rows.append([f"{name} worker CPU share (%, each run)", "", split, ""])
    rate = scenario.metrics[0]
    one_rate, _ = summary(one, rate)
    total = b["proxy"] + b["nginx"] + b["h2load"]
    if one_rate and total:
        ceiling = cores / (total / 1e6)
        rows.append([f"{name} ceiling {rate.label} (cores / CPU per {unit})", "",
                     f"{ceiling:,.0f}", ratio(ceiling, one_rate)])
    return rows


def worker_split(cell: Cell | None) -> str:
    """How each run's proxy CPU fell on the workers, busiest first: ``"52/48 61/39"``. A
    worker near 100 % while another idles bounds the run to one core, whatever the ceiling."""
    shown = []
    for run in (cell.runs if cell else []):
        seconds = run.get("worker_cpu_seconds") if run["ok"] else None
        if seconds and sum(seconds) > 0:
            shares = sorted((100 * part / sum(seconds) for part in seconds), reverse=True)
            shown.append("/".join(f"{share:.0f}" for share in shares))
    return " ".join(shown)


def machine_description(tools: dict) -> dict:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    distro = "?"
    with contextlib.suppress(OSError):
        match = re.search(r'PRETTY_NAME="([^"]+)"', Path("/etc/os-release").read_text())
        distro = match.group(1) if match else "?"
    memory = "?"
    with contextlib.suppress(OSError):
        match = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
        memory = f"{int(match.group(1)) / (1 << 20):.1f} GiB" if match else "?"
    commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                            capture_output=True, text=True, check=False).stdout.strip() or "?"
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "memory": memory, "kernel": platform.release(), "os": distro,
            "python": platform.python_version(), "mirror_commit": commit,
            "load_average_start": os.getloadavg(), **tools}


# --- main ---------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2, help="measured runs per scenario and path")
    parser.add_argument("--seconds", type=float, default=None,
                        help="target length of one measured run (default 3, --quick 0.5)")
    parser.add_argument("--quick", action="store_true",
                        help="short runs and 200 idle connections: a smoke test")
    parser.add_argument("--only", default=None,
                        help="comma-separated scenarios (" + ", ".join(s.name for s in SCENARIOS)
                        + "; 'workers' = every workers: one; 'engines' = every engines: "
                        "one, with --tls-engines)")
    parser.add_argument("--paths", default=",".join(PATHS),
                        help="comma-separated paths among direct,mirror,mitmproxy")
    parser.add_argument("--idle-connections", type=int, default=None,
                        help="connections held by the idle scenario (default 2000, --quick 200)")
    parser.add_argument("--json", metavar="FILE", help="save every raw number to FILE")
    parser.add_argument("--mitmdump", help="use this mitmdump instead of the managed venv")
    parser.add_argument("--no-store", action="store_true",
                        help="run mirror with --no-store (what its capture store costs)")
    parser.add_argument("--tls-engine", choices=("auto", "replay", "boringssl"), default=None,
                        help="mirror's upstream TLS engine (mirror run --tls-engine; default: "
                             "mirror's own default)")
    parser.add_argument("--tls-engines", default=None, metavar="E1,E2",
                        help="also run the engines: scenarios with one mirror per upstream TLS "
                             "engine, side by side (e.g. replay,boringssl)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (configs, proxies' logs) and say where")
    parser.add_argument("-v", "--verbose", action="store_true", help="show h2load commands")
    args = parser.parse_args(argv)
    if args.seconds is None:
        args.seconds = 0.5 if args.quick else 3.0
    if args.idle_connections is None:
        args.idle_connections = 200 if args.quick else 2000
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = set(args.paths) - set(PATHS)
    if unknown or not args.paths:
        parser.error(f"--paths: unknown {sorted(unknown)}; choose among {', '.join(PATHS)}")
    args.paths = [p for p in PATHS if p in args.paths]
    if args.tls_engines is not None:
        args.tls_engines = list(dict.fromkeys(
            e.strip() for e in args.tls_engines.split(",") if e.strip()))
        unknown = set(args.tls_engines) - set(ENGINES)
        if unknown or not args.tls_engines:
            parser.error(f"--tls-engines: unknown {sorted(unknown)}; choose among "
                         f"{', '.join(ENGINES)}")
    names = [s.name for s in SCENARIOS]
    if args.only:
        wanted = set()
        for item in (x.strip() for x in args.only.split(",") if x.strip()):
            if item in ("workers", "engines"):
                wanted |= {n for n in names if n.startswith(item + ":")}
            elif item in names:
                wanted.add(item)
            else:
                parser.error(f"--only: unknown scenario {item!r}; choose among {', '.join(names)}")
        args.only = wanted
    else:
        args.only = set(names)
    if not args.tls_engines:
        if any(n.startswith("engines:") for n in args.only) and args.only != set(names):
            parser.error("the engines: scenarios need --tls-engines (e.g. replay,boringssl)")
        args.only = {n for n in args.only if not n.startswith("engines:")}
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def stop(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft < want:                           # 2 000 held connections, twice over in a proxy
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    sys.path.insert(0, str(REPO))
    began = time.monotonic()
    children = Children()
    work = Path(tempfile.mkdtemp(prefix="mirror-bench-"))
    try:
        return bench_suite(args, work, children, began)
    except BenchError as error:
        log(f"bench: {error}")
        return 2
    except KeyboardInterrupt:
        log("bench: interrupted; stopping children")
        return 130
    finally:
        children.stop_all()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def bench_suite(args, work: Path, children: Children, began: float) -> int:
    nginx, h2load = ensure_debian_tools()
    paths = args.paths
    tools = {"nginx": version_of([nginx, "-v"], r"nginx/(\S+)"),
             "h2load": version_of([h2load, "--version"], r"nghttp2/(\S+)")}
    mitmdump = None
    if "mitmproxy" in paths:
        mitmdump = ensure_mitmdump(args.mitmdump)
        tools["mitmproxy"] = version_of([mitmdump, "--version"], r"Mitmproxy: (\S+)")
    import mirror
    tools["mirror"] = getattr(mirror, "__version__", "?")
    workers = "mirror" in paths and mirror_has_workers()
    selected = [s for s in SCENARIOS if s.name in args.only]
    skipped_workers = bool([s for s in selected if s.name.startswith("workers:")]
                           and "mirror" in paths and not workers)
    if not workers:                     # no --workers, or mirror is not among the paths
        selected = [s for s in selected if not s.name.startswith("workers:")]
    engines = [engine_path(e) for e in args.tls_engines or []]
    if any(s.name.startswith("engines:") for s in selected):
        selected = [s if not s.name.startswith("engines:") else
                    dataclasses.replace(s, paths=tuple(engines)) for s in selected]
    else:
        engines = []
    machine = machine_description(tools)

    bench = Bench(args, work, children)
    bench.h2load_bin = h2load
    log("starting nginx" + (", mirror" if "mirror" in paths else "")
        + (", mirror --workers 2" if any(s.name.startswith("workers:") for s in selected) else "")
        + "".join(f", {path}" for path in engines)
        + (", mitmdump" if mitmdump else "") + "...")
    bench.start_nginx(nginx)
    bench.mirror_workers = 1 if workers else None
    if "mirror" in paths:
        bench.targets["mirror"] = bench.start_mirror("mirror", bench.mirror_workers)
    if any(s.name.startswith("workers:") for s in selected):
        bench.targets["mirror-w2"] = bench.start_mirror("mirror-w2", 2)
    for path in engines:
        bench.targets[path] = bench.start_mirror(path, bench.mirror_workers,
                                                 engine=engine_of(path))
    if mitmdump:
        bench.mitmdump = mitmdump
        bench.targets["mitmproxy"] = bench.start_mitmdump("mitmdump")
    if "mirror" in paths:
        tcp = re.search(r"TCP: (.*)", (work / "mirror.out").read_text())
        machine["mirror_tcp"] = tcp.group(1) if tcp else "?"

    runner = Runner(bench, args)
    results: dict[str, dict[str, Cell]] = {}
    timings: dict[str, float] = {}
    for scenario in selected:
        scenario_paths = [p for p in (*paths, "mirror-w2", *engines) if p in scenario.paths
                          and p in bench.targets]
        if not scenario_paths:
            continue
        log(f"{scenario.name}: {', '.join(scenario_paths)}")
        started = time.monotonic()
        results[scenario.name] = runner.scenario(scenario, scenario_paths)
        timings[scenario.name] = time.monotonic() - started

    peaks = {name: status_kib(target.proc.pid, "VmHWM")
             for name, target in bench.targets.items() if name != "direct"}
    mismatch_lines = [line for log_file in sorted(work.glob("*mirror*.err"))
                      for line in log_file.read_text(errors="replace").splitlines()
                      if "mirrored with differences" in line]
    machine["load_average_end"] = os.getloadavg()
    total = time.monotonic() - began

    print(describe(machine, args))
    print()
    if any(":" not in name for name in results):
        print(main_table(results, paths, peaks))
    table = workers_table(results, peaks)
    if table:
        print()
        print(table)
    elif skipped_workers:
        print("\nworkers: skipped: no --workers in `mirror run --help`")
    table = engines_table(results, args.tls_engines or [])
    if table:
        print()
        print(table)
    notes = bench.notes + footnotes(results, mismatch_lines)
    if bench.restarts:
        notes.append("peak RSS of a restarted proxy covers the scenarios since its restart")
    if notes:
        print()
        print("\n".join(notes))
    print(f"\ntime: {total:.0f} s in all; " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    if args.json:
        raw = {"machine": machine, "settings": {k: (sorted(v) if isinstance(v, set) else v)
                                                for k, v in vars(args).items()},
               "peak_rss_kib": peaks, "seconds": {"total": total, **timings},
               "mirror_mismatch_warnings": len(mismatch_lines),
               "work_dir": str(work), "ports": {name: t.port for name, t in bench.targets.items()},
               "results": {s: {p: vars(c) for p, c in cells.items()}
                           for s, cells in results.items()}}
        Path(args.json).write_text(json.dumps(raw, indent=1, default=str))
        log(f"raw numbers: {args.json}")
    failed = any(cell.error or any(not r["ok"] for r in cell.runs)
                 for cells in results.values() for cell in cells.values())
    return 1 if failed else 0


def describe(machine: dict, args) -> str:
    load = " / ".join(f"{a:.2f}" for a in machine["load_average_start"][:1]
                      + machine["load_average_end"][:1])
    lines = [
        (f"machine: {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} "
         f"usable), {machine['memory']}, {machine['os']}, kernel {machine['kernel']}"),
        (f"load average (1 min) at start / end: {load}  (above 0 before we start: the machine "
         f"is shared)"),
        (f"python {machine['python']}; nginx {machine['nginx']} (1 worker, TLS 1.3); "
         f"h2load {machine['h2load']} (1 thread)"
         + (f"; mitmproxy {machine['mitmproxy']}" if "mitmproxy" in machine else "")
         + f"; mirror {machine['mirror']} ({machine['mirror_commit']})"),
    ]
    if "mirror_tcp" in machine:
        lines.append(f"mirror TCP: {machine['mirror_tcp']}")
    lines.append("mirror captures: " + ("off (--no-store)" if args.no_store
                                        else "on (a record per connection, its default)"))
    lines.append(f"runs: {args.runs} per scenario and path, interleaved, ~{args.seconds:g} s each; "
                 f"cells: median (min–max); ratios of medians (above 1 = mirror higher: better "
                 f"for /s, worse for ms, KiB, MiB)")
    return "\n".join(lines)


def footnotes(results: dict, mismatch_lines: list[str]) -> list[str]:
    notes = []
    for name, cells in results.items():
        for path, cell in cells.items():
            if cell.error:
                notes.append(f"! {name} {path}: {cell.error}")
            for run in cell.runs:
                if not run["ok"]:
                    notes.append(f"! {name} {path} run {run['run']} left out: "
                                 + "; ".join(run["problems"]))
                if run.get("tcp", {}).get("ListenOverflows"):
                    notes.append(f"  {name} {path} run {run['run']}: the kernel counted "
                                 f"{run['tcp']['ListenOverflows']} listen-queue overflows and "
                                 f"{run['tcp'].get('TCPSynRetrans', 0)} SYN retransmissions "
                                 "(machine-wide) during the run")
                if run.get("kept_up"):
                    notes.append(f"≥ {name} {path} run {run['run']}: kept up with the offered "
                                 f"{run['offered_per_s']:.0f} conn/s: a lower bound")
    for name, cells in results.items():
        if name == "idle":
            for path, cell in cells.items():
                for run in cell.runs:
                    if run.get("held"):
                        notes.append(f"idle {path} run {run['run']}: {run['held']} held, "
                                     f"{run['upstream']} upstream at nginx, opened in "
                                     f"{run['open_seconds']:.1f} s, RSS "
                                     f"{run['rss_before_kib'] / 1024:.1f} -> "
                                     f"{run['rss_after_kib'] / 1024:.1f} MiB")
    if mismatch_lines:
        sample = re.sub(r"^.*?mirrored with differences[^:]*: ", "", mismatch_lines[0])
        notes.append(f"mirror logged {len(mismatch_lines)} 'mirrored with differences' warnings "
                     f"(h2load's/Python's OpenSSL hellos), e.g.: {sample[:300]}")
    return notes


if __name__ == "__main__":
    sys.exit(main())
