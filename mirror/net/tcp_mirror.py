"""Give the proxy's upstream TCP connections the client's SYN.

Two layers, the second optional:

1. Socket options on the upstream socket before it connects (any user): TTL / hop limit (the
   client's, less one hop as forwarding would), DF, MSS (TCP_MAXSEG), and the window-scale
   factor (TCP_WINDOW_CLAMP caps it; SO_RCVBUFFORCE, as root, raises the buffer when the client
   scales more than this host would). These last for the whole connection, as forwarding would.
2. A SYN rewriter (root, Linux NFQUEUE over netlink, ``mirror.net.nfqueue``): our sockets carry a
   firewall mark; an iptables/ip6tables rule in a chain of ours (``MIRROR_SYN_<queue>``,
   mangle OUTPUT; queue number and mark are this process's own, so proxies coexist) queues
   their SYNs to this process, which rewrites each with ``emit.syn_rewrite``:
   window, option layout (order, NOP, EOL padding), IP ID, DSCP, flow label. The plan for a
   SYN is keyed by the socket's mark: its high bits name this process, its low bits a slot
   held by that one connection until it has connected. (Keying by a source port bound
   before connecting would take ports out of the kernel's 4-tuple reuse: at a few hundred
   connections a second, TIME_WAIT alone would exhaust the ephemeral range.)

Why NFQUEUE rather than a raw socket or a socket callback: libcurl owns the upstream socket
and Linux builds the SYN itself; socket options cannot reorder options, set the SYN's window
or drop SACK/timestamps per socket. A queue sees the real SYN the kernel made (its sequence
number, timestamp clock, window-scale value), so a rewrite can keep what the connection's
correctness depends on and change only what the kernel does not rely on. Rules are only ours
(marked sockets, our own chain) and are removed when the proxy stops.

The queue is served by the proxy's event loop when ``start`` is given one (every upstream
connect there is non-blocking, so a SYN never waits for the thread that sent it), or else by
a thread of its own. On the loop a SYN costs no thread wake-up and no hand-over of the
interpreter lock, which at hundreds of new connections a second is most of its price.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import select
import shlex
import socket
import subprocess
import threading
from dataclasses import dataclass

from mirror.emit.syn_rewrite import rewrite_syn
from mirror.fingerprint.fidelity import FieldFidelity
from mirror.net.nfqueue import NfQueue, QueuedPacket
from mirror.wire.errors import WireError
from mirror.wire.tcp import TcpSyn

log = logging.getLogger("mirror.tcp")

SO_MARK = 36
SO_RCVBUFFORCE = 33
TCP_WINDOW_CLAMP = 10
IP_MTU_DISCOVER = 10
IP_TRANSPARENT = 19
IP_BIND_ADDRESS_NO_PORT = 24
IPV6_TRANSPARENT = 75
IP_PMTUDISC_DONT, IP_PMTUDISC_DO = 0, 2
MARK_TAG = 0x6D000000        # "m"; then this process's queue (12 bits) and a slot (11 bits)
MARK_PROCESS_MASK = 0xFFFFF000
MAX_SLOT = 0x7FF             # bit 11 stays clear: never the gateway's TPROXY fwmark 0x6d6972
CHAIN_PREFIX = "MIRROR_SYN_"
QUEUE_BASE, QUEUE_SPAN = 0x7000, 0x1000
MAX_USER_MSS = 32767         # TCP_MAXSEG's upper bound (loopback's 65495 is the kernel's own anyway)


@dataclass(slots=True)
class SynResult:
    """What our SYN carried for one connection: per-field verdicts and the SYN itself (its
    raw IP and TCP headers as sent; None when the rewriter did not see it). The proxy, which
    owns the capture record, turns them into the record's parts."""

    fidelity: dict[str, FieldFidelity]
    syn: bytes | None = None


def _bound_queues() -> set[int] | None:
    """The NFQUEUE numbers some process is bound to now (None: the kernel does not say)."""
    try:
        with open("/proc/net/netfilter/nfnetlink_queue") as f:
            return {int(line.split()[0]) for line in f if line.strip()}
    except (OSError, ValueError, IndexError):
        return None


def _remove_stale_chains(run: list[str]) -> None:
    """Remove the chains (and OUTPUT's jumps to them) of mirror processes that died without
    removing them: a chain whose queue nobody is bound to. A live process binds its queue
    before it makes its chain and removes the chain before it unbinds, so it is never taken
    for a dead one. Stale rules let packets pass (--queue-bypass) but each one is a detour
    every packet the host sends has to make."""
    bound = _bound_queues()
    if bound is None:
        return
    listed = subprocess.run([*run, "-S"], capture_output=True, text=True, check=False).stdout
    stale = {name for name in re.findall(rf"^-N ({CHAIN_PREFIX}(\d+))$", listed, re.MULTILINE)
             if int(name[1]) not in bound}
    for chain, _ in stale:
        for line in listed.splitlines():
            words = shlex.split(line)
            if words[:2] == ["-A", "OUTPUT"] and words[-2:] == ["-j", chain]:
                subprocess.run([*run, "-D", *words[1:]], capture_output=True, check=False)
        subprocess.run([*run, "-F", chain], capture_output=True, check=False)
        subprocess.run([*run, "-X", chain], capture_output=True, check=False)
        log.info("removed %s: left by a mirror process that is gone", chain)


def _natural_wscale() -> int:
    """The window scale this host's kernel picks for a default socket (tcp_select_initial_window)."""
    try:
        with open("/proc/sys/net/ipv4/tcp_rmem") as f:
            rmem = int(f.read().split()[2])
        with open("/proc/sys/net/core/rmem_max") as f:
            rmem_max = int(f.read())
    except (OSError, ValueError, IndexError):
        return 7
    return max(0, min(14, max(rmem, rmem_max).bit_length() - 1 - 15))


class TcpMirror:
    def __init__(self, *, hops: int = 1, rewrite: bool = True) -> None:
        self.hops = hops
        self.queue_num = QUEUE_BASE + os.getpid() % QUEUE_SPAN
        self.want_rewrite = rewrite
        self.rewriting = False
        self.reason = "not started"
        self.remedy = ""               # what would make every field exact (see ``summary``)
        self.root = os.geteuid() == 0
        self.natural_wscale = _natural_wscale()
        self._plans: dict[int, TcpSyn] = {}          # by slot (the mark's low bits)
        self._free_slots = list(range(MAX_SLOT, 0, -1))
        self._keys = itertools.count(1)
        self._results: dict[int, SynResult] = {}
        self._refused: dict[int, dict[str, str]] = {}
        self._lock = threading.Lock()
        self._queue: NfQueue | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._loop = None              # the event loop serving the queue (None: a thread)
        self._tools: list[str] = []

    # --- life cycle -------------------------------------------------------------------------
    def start(self, loop=None) -> None:
        """Start rewriting if we can (else ``reason`` says why). With ``loop`` (an asyncio
        loop, called from its thread) the queue is served there: nothing in that loop may
        make a blocking connect, whose SYN would wait for the loop."""
        if not self.want_rewrite:
            self.reason = "SYN rewriting turned off (--no-syn-rewrite)"
            self.remedy = "remove --no-syn-rewrite"
            return
        if not self.root:
            self.reason = "SYN rewriting needs root (NFQUEUE and iptables)"
            self.remedy = "run as root"
            return
        queue, error = None, None
        for attempt in range(16):           # another process may hold this queue number
            number = QUEUE_BASE + (self.queue_num - QUEUE_BASE + attempt) % QUEUE_SPAN
            try:
                queue = NfQueue(number)
            except OSError as exc:
                error = exc
                continue
            self.queue_num = number
            break
        if queue is None:
            self.reason = f"SYN rewriting unavailable: no free NFQUEUE ({error})"
            self.remedy = ("load the kernel's nfnetlink_queue module (modprobe nfnetlink_queue); "
                           "`mirror gateway check` lists what else is missing")
            return
        try:
            self._install_rules()
        except (OSError, subprocess.CalledProcessError) as exc:
            self._remove_rules()
            queue.close()
            self.reason = f"SYN rewriting unavailable: {exc}"
            self.remedy = ("install iptables and ip6tables with the NFQUEUE target (xt_NFQUEUE); "
                           "`mirror gateway check` lists what else is missing")
            return
        self._queue = queue
        if loop is not None:
            self._loop = loop
            loop.add_reader(queue.fileno(), self._serve_pending)
        else:
            self._thread = threading.Thread(target=self._run, name="mirror-syn-queue",
                                            daemon=True)
            self._thread.start()
        self.rewriting = True
        self.reason = self.remedy = ""

    def _run(self) -> None:
        """Serve the queue until ``stop``: wait on its socket with a short timeout, then handle
        what is pending without blocking (so stopping is prompt)."""
        queue = self._queue
        if queue is None:
            return
        fd = queue.fileno()
        try:
            while not self._stopping.is_set():
                ready, _, _ = select.select([fd], [], [], 0.2)
                if ready:
                    self._serve_queue()
        except Exception:   # the queue must never take the proxy down
            log.exception("SYN queue stopped")
            self.rewriting = False

    def _serve_pending(self) -> None:
        """On the loop: the SYNs queued now, without blocking."""
        try:
            self._serve_queue()
        except Exception:   # the queue must never take the proxy down
            log.exception("SYN queue stopped")
            self._remove_rules()           # no SYN may wait for a queue nobody serves
            self._stop_serving()
            self.rewriting = False

    def _stop_serving(self) -> None:
        if self._loop is not None and self._queue is not None:
            with contextlib.suppress(Exception):   # a loop already closed has no readers left
                self._loop.remove_reader(self._queue.fileno())
        self._loop = None

    def stop(self) -> None:
        """Remove our rules, stop serving the queue, release the queue."""
        self._remove_rules()
        self.rewriting = False
        self._stop_serving()
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if self._queue is not None:
            try:
                self._queue.close()
            except OSError as error:
                log.info("SYN queue unbind: %s", error)
            self._queue = None

    def summary(self) -> str:
        """One line for the start-up output: which SYN fields will be exact, and if some will
        not, why and what to do about it."""
        exact = ["TTL", "DF", "MSS"]
        if self.root:
            exact.append("window scale")
            scale = ""
        else:
            scale = f"; window scale up to {self.natural_wscale} (more needs root)"
        if self.rewriting:
            exact += ["window", "option layout", "IP ID", "DSCP", "flow label"]
            return ("TCP: client SYNs mirrored (socket options and SYN rewriting); exact: "
                    + ", ".join(exact))
        return (f"TCP: client SYNs mirrored by socket options only; exact: {', '.join(exact)}"
                f"{scale}; the kernel's own: window, option layout, IP ID ({self.reason}); "
                f"to make them exact: {self.remedy or 'see the log'}")

    @property
    def mark(self) -> int:
        """This process's mark bits (a socket's mark adds its slot)."""
        return MARK_TAG | (self.queue_num - QUEUE_BASE) << 12

    @property
    def chain(self) -> str:
        return f"{CHAIN_PREFIX}{self.queue_num}"

    def _rule(self) -> list[str]:
        return ["-p", "tcp", "--tcp-flags", "SYN,ACK,RST", "SYN", "-m", "mark", "--mark",
                f"{self.mark:#x}/{MARK_PROCESS_MASK:#x}", "-j", "NFQUEUE", "--queue-num",
                str(self.queue_num),
                "--queue-bypass"]

    def _jump(self) -> list[str]:
        """OUTPUT's rule into our chain: only SYNs go there (every other packet the host sends
        passes with one match instead of two)."""
        return ["-p", "tcp", "--tcp-flags", "SYN,ACK,RST", "SYN", "-j", self.chain]

    def _install_rules(self) -> None:
        for tool in ("iptables", "ip6tables"):
            run = [tool, "-w", "5", "-t", "mangle"]
            _remove_stale_chains(run)
            chain = self.chain
            subprocess.run([*run, "-N", chain], capture_output=True, check=False)
            subprocess.run([*run, "-F", chain], capture_output=True, check=True)
            subprocess.run([*run, "-A", chain, *self._rule()], capture_output=True, check=True)
            if subprocess.run([*run, "-C", "OUTPUT", *self._jump()], capture_output=True,
                              check=False).returncode:
                subprocess.run([*run, "-I", "OUTPUT", *self._jump()], capture_output=True,
                               check=True)
            self._tools.append(tool)

    def _remove_rules(self) -> None:
        for tool in self._tools:
            run = [tool, "-w", "5", "-t", "mangle"]
            subprocess.run([*run, "-D", "OUTPUT", *self._jump()], capture_output=True,
                           check=False)
            subprocess.run([*run, "-F", self.chain], capture_output=True, check=False)
            subprocess.run([*run, "-X", self.chain], capture_output=True, check=False)
        self._tools = []

    # --- per connection ---------------------------------------------------------------------
    def prepare(self, fd: int, client: TcpSyn, source: str | None = None) -> int:
        """Before connect: socket options, and (when rewriting) a marked socket and a SYN
        plan. With ``source`` (TPROXY --spoof-source), the socket leaves from that address (the
        client's own), through IP_TRANSPARENT. Returns the key ``finish`` takes (every key
        must reach ``finish`` or ``forget``). A socket option the kernel refuses is noted
        (``finish`` reports it) and the connection goes on."""
        sock = socket.socket(fileno=fd)
        refused: dict[str, str] = {}

        def option(name: str, level: int, opt: int, value: int) -> None:
            try:
                sock.setsockopt(level, opt, value)
            except OSError as error:
                refused[name] = f"the kernel refused it: {error.strerror}"

        try:
            v6 = sock.family == socket.AF_INET6
            ttl = max(client.ttl - self.hops, 1)
            if v6:
                option("ttl", socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
            else:
                option("ttl", socket.IPPROTO_IP, socket.IP_TTL, ttl)
                option("df", socket.IPPROTO_IP, IP_MTU_DISCOVER,
                       IP_PMTUDISC_DO if client.df else IP_PMTUDISC_DONT)
            if client.mss and client.mss <= MAX_USER_MSS:
                option("mss", socket.IPPROTO_TCP, socket.TCP_MAXSEG, client.mss)
            if client.wscale is not None:
                wscale = min(client.wscale, 14)
                if wscale > self.natural_wscale and self.root:
                    option("wscale", socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << (16 + wscale))
                option("wscale", socket.IPPROTO_TCP, TCP_WINDOW_CLAMP, (1 << (16 + wscale)) - 1)
            if source is not None:
                if v6:
                    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
                else:
                    sock.setsockopt(socket.IPPROTO_IP, IP_TRANSPARENT, 1)
            if source is not None:
                # the port is left to connect(), which can reuse it towards other peers
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((source, 0))
            slot = None
            if self.rewriting:
                with self._lock:
                    slot = self._free_slots.pop() if self._free_slots else None
                if slot is not None:    # else (2047 connecting at once) the kernel's SYN
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, self.mark | slot)
                    except BaseException:
                        with self._lock:
                            self._free_slots.append(slot)
                        raise
            with self._lock:
                key = slot if slot is not None else -next(self._keys)
                if slot is not None:
                    self._plans[slot] = client
                self._refused[key] = refused
            return key
        finally:
            sock.detach()

    def forget(self, key: int | None) -> None:
        """Drop what ``prepare`` kept for a socket that was given up (libcurl may try
        several addresses for one connection)."""
        with self._lock:
            self._release(key)

    def _release(self, key: int | None) -> tuple[SynResult | None, dict[str, str]]:
        if key is None:
            return None, {}
        if key > 0 and self._plans.pop(key, None) is not None:
            self._free_slots.append(key)
        return self._results.pop(key, None), self._refused.pop(key, {})

    def finish(self, key: int | None, client: TcpSyn) -> SynResult:
        """After connect: what our SYN carried (and forget the plan). ``key`` is what
        ``prepare`` returned (None if it never ran)."""
        with self._lock:
            result, refused = self._release(key)
        if result is None:
            result = self._without_rewrite(client)
        for name, why in refused.items():
            result.fidelity[name] = FieldFidelity("approximated", why)
        return result

    def _without_rewrite(self, client: TcpSyn) -> SynResult:
        fidelity = {name: FieldFidelity("exact") for name in ("ttl", "df", "mss")}
        reason = self.reason or "our SYN was not seen by the rewriter"
        for name in ("window", "option_layout", "ip_id"):
            fidelity[name] = FieldFidelity("approximated", f"the kernel's own: {reason}")
        if client.wscale is not None and client.wscale > self.natural_wscale and not self.root:
            fidelity["wscale"] = FieldFidelity(
                "approximated", f"at most {self.natural_wscale} without root (SO_RCVBUFFORCE)")
        else:
            fidelity["wscale"] = FieldFidelity("exact")
        return SynResult(fidelity)

    # --- the queue (the loop's reader, or a thread of its own) -------------------------------
    def _serve_queue(self) -> None:
        queue = self._queue
        if queue is None:
            return
        for packet in queue.read():
            queue.accept(packet, self._rewritten(packet))

    def _rewritten(self, packet: QueuedPacket) -> bytes | None:
        """The packet our SYN becomes (None: as the kernel made it)."""
        slot = packet.mark & ~MARK_PROCESS_MASK
        with self._lock:
            client = self._plans.get(slot)
        if client is None:
            return None
        try:
            rewritten = rewrite_syn(packet.payload, client, hops=self.hops)
        except (WireError, ValueError, IndexError) as error:
            log.warning("SYN left as the kernel made it: %s", error)
            return None
        with self._lock:
            if slot in self._plans:
                self._results[slot] = SynResult(rewritten.fidelity, rewritten.packet)
        return rewritten.packet
