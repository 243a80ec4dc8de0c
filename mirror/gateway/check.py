"""``mirror gateway check``: what on this machine stops full mirroring, one problem per line.

Each check looks at the real thing: the effective user, the forwarding and reverse-path
sysctls under /proc, the iptables / ip6tables / ip commands, the kernel's support for the
targets and matches the gateway and the SYN rewriter use (tried as rules in a chain of
mirror's own that is removed again, so nothing else is touched), an NFQUEUE bound and
released over netlink, and a bind of the proxy's port. A check that needs root is skipped
when not root (being root is then the first problem).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CheckSpec", "Problem", "check_gateway"]

PROBE_QUEUE = 0x7FF0              # bound and released at once, outside TcpMirror's range


@dataclass(frozen=True, slots=True)
class CheckSpec:
    mode: str = "redirect"          # "redirect" | "tproxy"
    to_port: int = 8081
    ipv6: bool = True


@dataclass(frozen=True, slots=True)
class Problem:
    """What stops full mirroring, and the fix."""

    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.what}; fix: {self.fix}"


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _forwarding(spec: CheckSpec) -> list[Problem]:
    out = []
    if _read("/proc/sys/net/ipv4/ip_forward") != "1":
        out.append(Problem("IPv4 forwarding is off (the clients' other traffic is not routed)",
                           "sysctl -w net.ipv4.ip_forward=1"))
    if spec.ipv6 and _read("/proc/sys/net/ipv6/conf/all/forwarding") not in ("1", None):
        out.append(Problem("IPv6 forwarding is off",
                           "sysctl -w net.ipv6.conf.all.forwarding=1 (or --no-ipv6 for an "
                           "IPv4-only gateway)"))
    return out


def _strict_rp_filter() -> list[str]:
    """Interfaces whose effective rp_filter (the larger of ``all`` and its own) is strict."""
    base = Path("/proc/sys/net/ipv4/conf")
    every = _read(str(base / "all" / "rp_filter")) or "0"
    strict = []
    with contextlib.suppress(OSError):
        for conf in sorted(base.iterdir()):
            if conf.name in ("all", "default", "lo"):
                continue
            own = _read(str(conf / "rp_filter")) or "0"
            if max(int(every), int(own)) == 1:
                strict.append(conf.name)
    return strict


def _rp_filter(spec: CheckSpec) -> list[Problem]:
    if spec.mode != "tproxy":
        return []
    strict = _strict_rp_filter()
    if not strict:
        return []
    settings = " ".join(f"net.ipv4.conf.{name}.rp_filter=2" for name in ["all", *strict])
    return [Problem(f"strict reverse-path filtering (rp_filter=1) on {', '.join(strict)} drops "
                    f"TPROXY'd and spoofed-source traffic", f"sysctl -w {settings}")]


def _tools(spec: CheckSpec) -> tuple[list[Problem], list[str]]:
    """Missing commands, and the iptables tools that are there."""
    out, present = [], []
    wanted = ["iptables", *(["ip6tables"] if spec.ipv6 else [])]
    for tool in wanted:
        if shutil.which(tool):
            present.append(tool)
        else:
            out.append(Problem(f"{tool} not found (gateway rules and SYN rewriting use it)",
                               "install it (Debian: apt-get install iptables)"))
    if spec.mode == "tproxy" and not shutil.which("ip"):
        out.append(Problem("ip not found (TPROXY's policy routing uses it)",
                           "install it (Debian: apt-get install iproute2)"))
    return out, present


def _probes(spec: CheckSpec, v6: bool) -> list[tuple[str, list[str], str, str]]:
    """(table, rule, what it needs, modules) for each kernel feature mirror uses."""
    family = "ipv6" if v6 else "ipv4"
    out = [("mangle", ["-p", "tcp", "-j", "NFQUEUE", "--queue-num", "1", "--queue-bypass"],
            "the NFQUEUE target (SYN rewriting)", "xt_NFQUEUE")]
    if spec.mode == "redirect":
        out.append(("nat", ["-p", "tcp", "-j", "REDIRECT", "--to-ports", str(spec.to_port)],
                    "the REDIRECT target (nat table)",
                    f"xt_REDIRECT {'ip6table_nat' if v6 else 'iptable_nat'}"))
    else:
        out += [("mangle", ["-p", "tcp", "-j", "TPROXY", "--on-port", str(spec.to_port),
                            "--tproxy-mark", "0x1/0x1"],
                 "the TPROXY target", f"xt_TPROXY nf_tproxy_{family}"),
                ("mangle", ["-p", "tcp", "-m", "socket", "--transparent", "-j", "ACCEPT"],
                 "the socket match", "xt_socket")]
    return out


def _kernel_support(spec: CheckSpec, tools: list[str]) -> list[Problem]:
    """Each target and match tried as a rule in a chain of our own (never jumped to), which
    is then removed."""
    out = []
    chain = f"MIRROR_CHECK_{os.getpid() % 100000}"
    for tool in tools:
        for table, rule, needs, modules in _probes(spec, tool == "ip6tables"):
            base = [tool, "-w", "5", "-t", table]
            made = subprocess.run([*base, "-N", chain], capture_output=True, text=True,
                                  check=False)
            try:
                if made.returncode:
                    error = made.stderr.strip().splitlines()[-1:] or ["?"]
                    out.append(Problem(f"{tool}: the {table} table is unusable ({error[0]})",
                                       f"modprobe {modules}"))
                    continue
                added = subprocess.run([*base, "-A", chain, *rule], capture_output=True,
                                       text=True, check=False)
                if added.returncode:
                    out.append(Problem(f"{tool}: the kernel lacks {needs}",
                                       f"modprobe {modules} (or a kernel built with it)"))
            finally:
                subprocess.run([*base, "-F", chain], capture_output=True, check=False)
                subprocess.run([*base, "-X", chain], capture_output=True, check=False)
    return out


def _nfqueue() -> list[Problem]:
    from mirror.net.nfqueue import NfQueue

    try:
        NfQueue(PROBE_QUEUE).close()
    except OSError as error:
        return [Problem(f"no NFQUEUE over netlink ({error.strerror or error}): SYN rewriting "
                        "cannot start", "modprobe nfnetlink_queue")]
    return []


def _holder(port: int) -> str:
    """Who listens on ``port``, as ``ss`` says (empty when it cannot say)."""
    if not shutil.which("ss"):
        return ""
    listed = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True,
                            text=True, check=False).stdout
    found = re.findall(r'\("([^"]+)",pid=(\d+)', listed)
    return ", ".join(f"{name} pid {pid}" for name, pid in dict.fromkeys(found))


def _port(spec: CheckSpec) -> list[Problem]:
    family, host = (socket.AF_INET6, "::") if spec.ipv6 and socket.has_ipv6 else \
        (socket.AF_INET, "0.0.0.0")
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
        family, host = socket.AF_INET, "0.0.0.0"
        sock = socket.socket(family, socket.SOCK_STREAM)
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as the proxy's listener
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            sock.bind((host, spec.to_port))
            sock.listen()
        except PermissionError:         # a port below 1024 without root: reported as not root
            return []
        except OSError as error:
            holder = _holder(spec.to_port)
            by = f" by {holder}" if holder else ""
            return [Problem(f"port {spec.to_port} is in use{by} ({error.strerror})",
                            "stop what holds it, or give `mirror gateway up` and `mirror run` "
                            "another port (--to-port N, --listen 0.0.0.0:N)")]
    return []


def check_gateway(spec: CheckSpec) -> list[Problem]:
    """Every problem found, in the order a person would fix them."""
    problems: list[Problem] = []
    root = os.geteuid() == 0
    if not root:
        problems.append(Problem("not root: gateway rules, SYN rewriting and TPROXY need root "
                                "(kernel support was not checked)",
                                "run `mirror gateway check`, `up` and `mirror run` as root"))
    problems += _forwarding(spec)
    problems += _rp_filter(spec)
    missing, tools = _tools(spec)
    problems += missing
    if root:
        problems += _kernel_support(spec, tools)
        problems += _nfqueue()
    problems += _port(spec)
    return problems
