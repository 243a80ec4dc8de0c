"""A network-namespace test bed: client -> gateway -> server, for the proxy's fidelity tests.

Three namespaces per bed, named ``mir-<pid>-<random>-{client,gateway,server}`` so parallel or
leftover runs never collide, joined by two veth pairs::

    client eth0 198.18.1.2/24  <->  gw-client 198.18.1.1/24 [gateway] gw-server 198.19.2.1/24
                                                                  <->  server eth0 198.19.2.2/24

(and, unless ``ipv6=False``, fd00:18:1::2/64 / fd00:18:1::1/64 and fd00:19:2::1/64 /
fd00:19:2::2/64). The server sits in another subnet, so every packet is routed by the gateway
(TTL - 1) exactly as a real router would, with real MTU-1500 links (MSS 1460, not loopback's).

Everything runs as root through ``ip netns exec``; iptables rules only ever live inside the
bed's gateway namespace, so the host's rule set is never touched. Teardown (normal exit, an
exception, KeyboardInterrupt) kills every process started through the bed and every process
left inside its namespaces, then deletes the namespaces (which removes their veths).

Usage (``tests/`` is on sys.path the same way ``from conftest import ...`` works)::

    from netbed import NetBed, netbed_fixture  # noqa: F401  (registers the `netbed` fixture)

    def test_something(netbed, tmp_path):
        echo, port = netbed.start_echo(ca_dir=tmp_path / "ca")     # server ns, 0.0.0.0:443
        with netbed.capture("server", NetBed.SERVER_IFACE, "tcp port 443") as pcap:
            out = netbed.check_python("client", ["-c", CODE, NetBed.SERVER_IP])
        ...

Commands see the bed's own /etc/hosts (echo.test and server.test -> 198.19.2.2, more with
``hosts=`` / ``add_host``) and a resolv.conf whose nameserver refuses at once, so no client
ever waits on the host's DNS.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Self

import pytest

REPO = Path(__file__).resolve().parents[1]
PREFIX = "mir-"
ROLES = ("client", "gateway", "server")
NETNS_DIR = Path("/run/netns")

# Commands that must be quick; a hang here is a bug, not a slow machine.
COMMAND_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0


class NetBedError(RuntimeError):
    """The bed could not be built, or a command inside it failed."""


class CommandFailed(NetBedError):
    """A command run in a namespace exited non-zero; keeps its exit status and output."""

    def __init__(self, argv, returncode, stdout, stderr) -> None:
        self.argv, self.returncode, self.stdout, self.stderr = list(argv), returncode, stdout, stderr
        super().__init__(f"{' '.join(map(str, argv))} exited {returncode}: {(stderr or '').strip()}")


def _run(argv, *, timeout: float = COMMAND_TIMEOUT, input: str | None = None) -> str:  # noqa: A002 - as in subprocess
    """Run a host-side command (ip, iptables in a namespace via -n/exec); text stdout."""
    try:
        done = subprocess.run([str(a) for a in argv], check=False, capture_output=True,
                              text=True, timeout=timeout, input=input)
    except subprocess.TimeoutExpired as error:
        raise NetBedError(f"{' '.join(map(str, argv))} timed out after {timeout}s") from error
    if done.returncode != 0:
        raise CommandFailed(argv, done.returncode, done.stdout, done.stderr)
    return done.stdout


# -- stale namespaces ---------------------------------------------------------------------------

def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0


def _process_start(pid: int) -> float | None:
    """Epoch seconds when ``pid`` started (1 s precision), None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie has finished: it no longer owns anything
        return None
    return _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def list_namespaces(prefix: str = PREFIX) -> list[str]:
    """Names of the named network namespaces starting with ``prefix``."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def cleanup_stale(prefix: str = PREFIX) -> list[str]:
    """Delete namespaces left behind by crashed runs; returns the names deleted.

    Only names starting with ``prefix`` are considered. A bed's name carries its creator's
    pid: the namespace is stale when that process is gone (or the pid now belongs to a
    process younger than the namespace). A name without a pid is stale when it is older than
    this process. Namespaces of live runs, including parallel ones, are left alone.
    Processes still inside a stale namespace are not killed (they are not ours to end);
    deleting the name only detaches it, and its veths go away with the last of them.
    """
    if not prefix.startswith(PREFIX):
        raise ValueError(f"refusing to clean namespaces outside {PREFIX!r}: {prefix!r}")
    own_start = _process_start(os.getpid()) or time.time()
    removed = []
    for name in list_namespaces(prefix):
        try:
            created = (NETNS_DIR / name).stat().st_mtime
        except FileNotFoundError:
            continue
        match = re.match(re.escape(PREFIX) + r"(\d+)-", name)
        if match:
            creator = _process_start(int(match.group(1)))
            stale = creator is None or creator > created + 2.0  # pid reused after the crash
        else:
            stale = created < own_start - 2.0
        if stale:
            with contextlib.suppress(NetBedError):
                _run(["ip", "netns", "delete", name])
                removed.append(name)
    # Work directories of beds that made their own (tempfile.mkdtemp(prefix=<bed name>-)).
    for entry in Path(tempfile.gettempdir()).glob(f"{prefix}*-*-*"):
        match = re.fullmatch(re.escape(PREFIX) + r"(\d+)-[0-9a-f]{6}-\w+", entry.name)
        if match and entry.is_dir() and _process_start(int(match.group(1))) is None:
            shutil.rmtree(entry, ignore_errors=True)
    return removed


# -- availability -------------------------------------------------------------------------------

_unavailable: list[str | None] = []


def unavailable_reason() -> str | None:
    """Why a bed cannot be built here (not root, no ip/iptables/tcpdump, netns refused), or None."""
    if _unavailable:
        return _unavailable[0]
    reason = None
    if os.geteuid() != 0:
        reason = "network namespaces need root"
    else:
        missing = [tool for tool in ("ip", "iptables", "tcpdump") if not shutil.which(tool)]
        if missing:
            reason = f"missing tools: {', '.join(missing)} (apt-get install iproute2 iptables tcpdump)"
    if reason is None:
        probe = f"{PREFIX}{os.getpid()}-probe"
        try:
            _run(["ip", "netns", "add", probe])
            _run(["ip", "netns", "delete", probe])
        except (NetBedError, OSError) as error:
            reason = f"`ip netns` unavailable: {error}"
    _unavailable.append(reason)
    return reason


# -- the bed ------------------------------------------------------------------------------------

_open_beds: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_open_beds() -> None:  # last resort: an interpreter exiting with a bed still open
    for bed in list(_open_beds):
        bed.close()


# Runs first inside `ip netns exec` (whose mount namespace is already private and a slave of
# the host's): the bed's own hosts and resolv.conf, so names resolve from the bed and DNS
# never waits on the host's resolver (unreachable from the bed: a Chrome-like client's HTTPS
# record lookup would stall ~10 s). "nameserver 127.0.0.1" fails at once (port unreachable).
_ETC_WRAPPER = """set -e
if [ -e /etc/resolv.conf ]; then mount --bind "$1" /etc/resolv.conf; fi
if [ -e /etc/hosts ]; then mount --bind "$2" /etc/hosts; fi
shift 2
exec "$@"
"""


class NetBed:
    """Three namespaces (client, gateway, server) routed through the gateway. A context manager.

    ``ns`` arguments accept a role ("client", "gateway", "server") or a full namespace name.
    """

    CLIENT_IP = "198.18.1.2"
    GATEWAY_CLIENT_IP = "198.18.1.1"
    SERVER_IP = "198.19.2.2"
    GATEWAY_SERVER_IP = "198.19.2.1"
    CLIENT_IP6 = "fd00:18:1::2"
    GATEWAY_CLIENT_IP6 = "fd00:18:1::1"
    SERVER_IP6 = "fd00:19:2::2"
    GATEWAY_SERVER_IP6 = "fd00:19:2::1"
    CLIENT_IFACE = "eth0"          # in the client namespace
    SERVER_IFACE = "eth0"          # in the server namespace
    GW_CLIENT_IFACE = "gw-client"  # in the gateway namespace, facing the client
    GW_SERVER_IFACE = "gw-server"  # in the gateway namespace, facing the server

    def __init__(self, *, workdir: str | Path | None = None, ipv6: bool = True,
                 hosts: dict[str, str] | None = None, nameserver: str = "127.0.0.1",
                 private_etc: bool = True, prefix: str = PREFIX) -> None:
        if not prefix.startswith(PREFIX):
            raise ValueError(f"namespace prefix must start with {PREFIX!r}")
        self.hosts = {"echo.test": self.SERVER_IP, "server.test": self.SERVER_IP,
                      **(hosts or {})}
        self.nameserver = nameserver
        self.private_etc = private_etc
        self.name = f"{prefix}{os.getpid()}-{secrets.token_hex(3)}"
        self.ns = {role: f"{self.name}-{role}" for role in ROLES}
        self.ipv6 = ipv6
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else None
        self._procs: list[subprocess.Popen] = []
        self._rules: list[tuple[str, list[str]]] = []
        self._created: list[str] = []
        self._lock = threading.Lock()
        self._closed = False
        self._started = False
        self._seq = 0

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> Self:
        if self._started:
            raise NetBedError("bed already started")
        self._started = True
        _open_beds.add(self)
        try:
            if self.workdir is None:
                self.workdir = Path(tempfile.mkdtemp(prefix=self.name + "-"))
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._write_etc()
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _build(self) -> None:
        client, gateway, server = (self.ns[r] for r in ROLES)
        for name in (client, gateway, server):
            _run(["ip", "netns", "add", name])
            self._created.append(name)
        # Veths are created directly inside the namespaces: their names are namespace-local
        # and never appear (or collide) in the host namespace.
        _run(["ip", "-n", gateway, "link", "add", self.GW_CLIENT_IFACE, "type", "veth",
              "peer", "name", self.CLIENT_IFACE, "netns", client])
        _run(["ip", "-n", gateway, "link", "add", self.GW_SERVER_IFACE, "type", "veth",
              "peer", "name", self.SERVER_IFACE, "netns", server])
        forwarding = "1"
        self._sysctls(gateway, {"net/ipv4/ip_forward": forwarding,
                                **({"net/ipv6/conf/all/forwarding": forwarding} if self.ipv6 else {})},
                      [self.GW_CLIENT_IFACE, self.GW_SERVER_IFACE])
        self._sysctls(client, {}, [self.CLIENT_IFACE])
        self._sysctls(server, {}, [self.SERVER_IFACE])
        links = [
            (client, self.CLIENT_IFACE, f"{self.CLIENT_IP}/24", f"{self.CLIENT_IP6}/64"),
            (gateway, self.GW_CLIENT_IFACE, f"{self.GATEWAY_CLIENT_IP}/24", f"{self.GATEWAY_CLIENT_IP6}/64"),
            (gateway, self.GW_SERVER_IFACE, f"{self.GATEWAY_SERVER_IP}/24", f"{self.GATEWAY_SERVER_IP6}/64"),
            (server, self.SERVER_IFACE, f"{self.SERVER_IP}/24", f"{self.SERVER_IP6}/64"),
        ]
        for ns, iface, v4, v6 in links:
            _run(["ip", "-n", ns, "addr", "add", v4, "dev", iface])
            if self.ipv6:  # nodad: usable at once, no 1-2 s of "tentative"
                _run(["ip", "-n", ns, "-6", "addr", "add", v6, "dev", iface, "nodad"])
            _run(["ip", "-n", ns, "link", "set", iface, "up"])
        for ns in (client, gateway, server):
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "-n", client, "route", "add", "default", "via", self.GATEWAY_CLIENT_IP])
        _run(["ip", "-n", server, "route", "add", "default", "via", self.GATEWAY_SERVER_IP])
        if self.ipv6:
            _run(["ip", "-n", client, "-6", "route", "add", "default", "via", self.GATEWAY_CLIENT_IP6])
            _run(["ip", "-n", server, "-6", "route", "add", "default", "via", self.GATEWAY_SERVER_IP6])

    def _sysctls(self, ns: str, values: dict[str, str], ifaces: list[str]) -> None:
        """Forwarding where asked; rp_filter off everywhere (new namespaces may inherit a
        strict host setting); IPv6 on or off on the bed's interfaces as configured."""
        values = dict(values)
        for scope in ("all", "default", *ifaces):
            values[f"net/ipv4/conf/{scope}/rp_filter"] = "0"
        ipv6_off = "0" if self.ipv6 else "1"
        for scope in ("all", "default", *ifaces):
            values[f"net/ipv6/conf/{scope}/disable_ipv6"] = ipv6_off
            if self.ipv6:
                values[f"net/ipv6/conf/{scope}/accept_dad"] = "0"
        script = "".join(f"echo {v} > /proc/sys/{k}\n" for k, v in values.items())
        _run(["ip", "netns", "exec", ns, "sh", "-e", "-c", script])

    def close(self) -> None:
        """Kill what the bed started and whatever is left in its namespaces; delete them."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        restore = None
        if threading.current_thread() is threading.main_thread():
            # A second Ctrl-C must not leave half a bed behind; teardown is bounded anyway.
            restore = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            _stop_all(self._procs, signal.SIGTERM)
            for name in self._created:
                self._kill_namespace_pids(name)
            for name in reversed(self._created):
                with contextlib.suppress(NetBedError, OSError):
                    _run(["ip", "netns", "delete", name])
            self._rules.clear()
            if self._own_workdir and self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
        finally:
            if restore is not None:
                signal.signal(signal.SIGINT, restore)
            _open_beds.discard(self)

    @staticmethod
    def _kill_namespace_pids(name: str) -> None:
        try:
            pids = [int(p) for p in _run(["ip", "netns", "pids", name]).split()]
        except (NetBedError, OSError, ValueError):
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    # -- running things ---------------------------------------------------------------------
    def netns(self, ns: str) -> str:
        """The namespace name of a role ("client", "gateway", "server") or a full name."""
        if ns in self.ns:
            return self.ns[ns]
        if ns in self.ns.values():
            return ns
        raise ValueError(f"unknown namespace {ns!r}; one of {', '.join(ROLES)}")

    def exec_argv(self, ns: str, argv) -> list[str]:
        """``argv`` wrapped to run inside the namespace (with the bed's /etc/hosts and
        /etc/resolv.conf bind-mounted in the private mount namespace `ip netns exec` makes)."""
        argv = [str(a) for a in argv]
        if self.private_etc:
            argv = ["sh", "-c", _ETC_WRAPPER, "netbed", str(self.workdir / "resolv.conf"),
                    str(self.workdir / "hosts"), *argv]
        return ["ip", "netns", "exec", self.netns(ns), *argv]

    def _write_etc(self) -> None:
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
        lines += [f"{addr} {name}" for name, addr in self.hosts.items()]
        (self.workdir / "hosts").write_text("\n".join(lines) + "\n")
        (self.workdir / "resolv.conf").write_text(
            f"nameserver {self.nameserver}\noptions timeout:1 attempts:1\n")

    def add_host(self, name: str, address: str) -> None:
        """Resolve ``name`` to ``address`` in commands started from now on."""
        self.hosts[name] = address
        self._write_etc()

    def run(self, ns: str, argv, **popen_kwargs) -> subprocess.Popen:
        """Start ``argv`` inside a namespace (its own session); stopped at bed exit."""
        if self._closed or not self._started:
            raise NetBedError("the bed is not running")
        popen_kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(self.exec_argv(ns, argv), **popen_kwargs)
        self._procs.append(proc)
        return proc

    def check_output(self, ns: str, argv, *, timeout: float = 30.0,
                     input: str | None = None,  # noqa: A002 - as in subprocess
                     env: dict | None = None) -> str:
        """Run ``argv`` inside a namespace to completion; its stdout (text).

        CommandFailed (with .returncode, .stdout, .stderr) on a non-zero exit; NetBedError
        when it outlives ``timeout`` (it is killed).
        """
        proc = self.run(ns, argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(proc, signal.SIGKILL)
            out, err = proc.communicate()
            raise NetBedError(f"{' '.join(map(str, argv))} in {ns} timed out after {timeout}s; "
                              f"stderr: {err.strip()}") from None
        if proc.returncode != 0:
            raise CommandFailed(argv, proc.returncode, out, err)
        return out

    @staticmethod
    def python_env(extra: dict | None = None) -> dict:
        """The environment for Python in the bed: the repository first on PYTHONPATH."""
        env = dict(os.environ)
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + path if path else "")
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra or {})
        return env

    @staticmethod
    def python_argv(code_or_args) -> list[str]:
        """A str is code for ``-c``; a list is a script and its arguments (or ``-m``, ...)."""
        if isinstance(code_or_args, str):
            return [sys.executable, "-c", code_or_args]
        return [sys.executable, *[str(a) for a in code_or_args]]

    def python(self, ns: str, code_or_args, **popen_kwargs) -> subprocess.Popen:
        """Start ``sys.executable`` in a namespace with the repo on PYTHONPATH (``env=`` adds
        variables to the current environment rather than replacing it)."""
        popen_kwargs["env"] = self.python_env(popen_kwargs.get("env"))
        return self.run(ns, self.python_argv(code_or_args), **popen_kwargs)

    def check_python(self, ns: str, code_or_args, *, timeout: float = 30.0,
                     input: str | None = None,  # noqa: A002 - as in subprocess
                     env: dict | None = None) -> str:
        """Run Python in a namespace to completion; its stdout (see check_output)."""
        return self.check_output(ns, self.python_argv(code_or_args), timeout=timeout, input=input,
                                 env=self.python_env(env))

    def sysctl(self, ns: str, key: str, value=None) -> str:
        """Read (value=None) or write a sysctl of a namespace, e.g. "net.ipv4.ip_default_ttl"."""
        path = "/proc/sys/" + key.replace(".", "/")
        if value is None:
            return self.check_output(ns, ["cat", path], timeout=COMMAND_TIMEOUT).strip()
        self.check_output(ns, ["sh", "-c", 'echo "$1" > "$2"', "sh", str(value), path],
                          timeout=COMMAND_TIMEOUT)
        return str(value)

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM,
             timeout: float = STOP_TIMEOUT) -> int:
        """Signal a process started through the bed and wait (SIGKILL after ``timeout``)."""
        return _stop(proc, sig, timeout)

    def _new_path(self, stem: str, suffix: str) -> Path:
        with self._lock:
            self._seq += 1
            seq = self._seq
        return self.workdir / f"{seq:02d}-{stem}{suffix}"

    # -- waiting ----------------------------------------------------------------------------
    def listening_ports(self, ns: str, proc: subprocess.Popen | None = None) -> set[int]:
        """TCP ports in LISTEN state in a namespace (read from /proc/<pid>/net when possible)."""
        text = None
        if proc is not None and proc.poll() is None:
            try:
                text = "".join(Path(f"/proc/{proc.pid}/net/{t}").read_text() for t in ("tcp", "tcp6"))
            except OSError:
                text = None
        if text is None:
            text = self.check_output(ns, ["cat", "/proc/net/tcp", "/proc/net/tcp6"],
                                     timeout=COMMAND_TIMEOUT)
        ports = set()
        for line in text.splitlines():
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A" and ":" in fields[1]:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        return ports

    def wait_listening(self, ns: str, port: int, *, timeout: float = 10.0,
                       proc: subprocess.Popen | None = None) -> None:
        """Wait until something listens on TCP ``port`` in the namespace; TimeoutError after
        ``timeout``, NetBedError at once if ``proc`` (the expected listener) exits."""
        deadline = time.monotonic() + timeout
        while True:
            if proc is not None and proc.poll() is not None:
                raise NetBedError(f"process exited ({proc.returncode}) before listening on {port}")
            if port in self.listening_ports(ns, proc):
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"nothing listening on TCP {port} in {ns} after {timeout}s")
            time.sleep(0.02)

    # -- interception -----------------------------------------------------------------------
    def redirect(self, ports=(443, 80), *, to_port: int, protocol: str = "tcp",
                 ipv6: bool | None = None) -> None:
        """Gateway NAT: the client's connections to ``ports`` go to the gateway's ``to_port``.

        ``iptables -t nat -A PREROUTING -i gw-client -p tcp --dport X -j REDIRECT --to-ports P``
        in the gateway namespace only (plus ip6tables when the bed has IPv6). A listener on
        0.0.0.0:P / [::]:P in the gateway gets them; SO_ORIGINAL_DST gives the real target.
        """
        tools = ["iptables"] + (["ip6tables"] if (self.ipv6 if ipv6 is None else ipv6) else [])
        for tool in tools:
            for port in ports:
                rule = ["PREROUTING", "-i", self.GW_CLIENT_IFACE, "-p", protocol, "--dport",
                        str(port), "-j", "REDIRECT", "--to-ports", str(to_port)]
                self.check_output("gateway", [tool, "-w", "5", "-t", "nat", "-A", *rule],
                                  timeout=COMMAND_TIMEOUT)
                self._rules.append((tool, rule))

    def unredirect(self) -> None:
        """Remove every rule redirect() added (newest first)."""
        while self._rules:
            tool, rule = self._rules.pop()
            self.check_output("gateway", [tool, "-w", "5", "-t", "nat", "-D", *rule],
                              timeout=COMMAND_TIMEOUT)

    # -- capture ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def capture(self, ns: str, iface: str, bpf: str = "", *, path: str | Path | None = None,
                settle: float = 0.3, timeout: float = 10.0):
        """tcpdump on ``iface`` in a namespace while the block runs; yields the pcap path.

        Packets are written one by one (``--immediate-mode -U``); at exit the capture waits
        ``settle`` seconds for the last packets, then stops tcpdump with SIGINT.
        """
        pcap = Path(path) if path else self._new_path(f"{ns}-{iface}", ".pcap")
        log = pcap.with_suffix(pcap.suffix + ".log")
        argv = ["tcpdump", "-i", iface, "-n", "-s", "0", "--immediate-mode", "-U", "-Z", "root",
                "-w", str(pcap)]
        if bpf:
            argv.append(bpf)
        with open(log, "w") as errors:
            proc = self.run(ns, argv, stdout=subprocess.DEVNULL, stderr=errors)
        deadline = time.monotonic() + timeout
        while "listening on" not in log.read_text():
            if proc.poll() is not None:
                raise NetBedError(f"tcpdump failed in {ns}: {log.read_text().strip()}")
            if time.monotonic() >= deadline:
                _stop(proc, signal.SIGKILL)
                raise TimeoutError(f"tcpdump in {ns} not ready after {timeout}s")
            time.sleep(0.02)
        try:
            yield pcap
        finally:
            time.sleep(settle)
            _stop(proc, signal.SIGINT, timeout)

    # -- the echo server --------------------------------------------------------------------
    def start_echo(self, ns: str = "server", port: int = 443, ca_dir: str | Path | None = None,
                   *, host: str | None = None, timeout: float = 20.0) -> tuple[subprocess.Popen, int]:
        """``python -m mirror echo`` in a namespace; returns (process, port) once it listens.

        ``host`` defaults to 0.0.0.0 (IPv4 only: a dual-stack ``::`` listener would report
        IPv4 clients as ``::ffff:198.18.1.2``); for IPv6 start another one on
        ``host=NetBed.SERVER_IP6`` (same port is fine: it does not overlap). The CA lives in
        ``ca_dir`` (default: the bed's workdir), its certificate at ``ca_dir/ca.pem``.
        Output goes to ``<workdir>/NN-echo.log``; the process is stopped at bed exit.
        """
        host = host or "0.0.0.0"
        ca_dir = Path(ca_dir) if ca_dir else self.workdir / "echo-ca"
        listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        log = self._new_path("echo", ".log")
        with open(log, "w") as out:
            proc = self.python(ns, ["-m", "mirror", "echo", "--listen", listen, "--ca-dir", ca_dir],
                               stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            text = log.read_text()
            match = re.search(r"listening on \S+:(\d+)/", text)
            if match:
                break
            if proc.poll() is not None or time.monotonic() >= deadline:
                _stop(proc, signal.SIGKILL)
                raise NetBedError(f"mirror echo did not start in {ns}: {text.strip()!r}")
            time.sleep(0.02)
        bound = int(match.group(1))
        self.wait_listening(ns, bound, timeout=max(1.0, deadline - time.monotonic()), proc=proc)
        return proc, bound


def _signal(proc: subprocess.Popen, sig: int) -> None:
    """Signal a process's group (it was started in its own session), else the process."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def _stop_all(procs, sig: int, timeout: float = STOP_TIMEOUT) -> None:
    """Signal every process at once, wait for all with one deadline, SIGKILL the rest."""
    for proc in procs:
        _signal(proc, sig)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal(proc, signal.SIGKILL)
            proc.kill()
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)


def _stop(proc: subprocess.Popen, sig: int, timeout: float = STOP_TIMEOUT) -> int | None:
    """Signal one process (its group); wait; SIGKILL if it outlives ``timeout``."""
    _stop_all([proc], sig, timeout)
    return proc.returncode


# -- pytest fixtures ----------------------------------------------------------------------------

_cleaned: list[bool] = []


def _bed_or_skip(workdir: Path) -> NetBed:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    if not _cleaned:
        _cleaned.append(True)
        cleanup_stale()
    return NetBed(workdir=workdir)


@pytest.fixture(name="netbed")
def netbed_fixture(tmp_path):
    """A fresh NetBed per test (artifacts in tmp_path); skipped without root or `ip netns`."""
    with _bed_or_skip(tmp_path / "netbed") as bed:
        yield bed


@pytest.fixture(name="netbed_module", scope="module")
def netbed_module_fixture(tmp_path_factory):
    """One NetBed shared by a test module."""
    with _bed_or_skip(tmp_path_factory.mktemp("netbed")) as bed:
        yield bed


# ``from netbed import netbed`` (or ``from tests.netbed import netbed``) also works; the
# ``*_fixture`` names avoid ruff's F811 when a test takes a parameter named ``netbed``.
netbed = netbed_fixture
netbed_module = netbed_module_fixture


if __name__ == "__main__":  # python tests/netbed.py: remove what crashed runs left behind
    for leftover in cleanup_stale():
        print(f"deleted namespace {leftover}")
