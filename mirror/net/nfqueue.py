"""A netfilter queue (NFQUEUE) served by this process over netlink: no C library, no compiler.

:class:`NfQueue` opens an ``AF_NETLINK`` / ``NETLINK_NETFILTER`` socket, binds it to one queue
number (copy mode: whole packets; fail-open, so a full queue lets packets pass rather than
dropping them), and then reads queued packets and sends verdicts — accept as is, accept with a
replacement packet, or drop. The messages themselves are built and parsed in
``mirror.net.nfqueue_messages``. The socket is non-blocking after binding, so an event loop can
watch ``fileno()`` and call :meth:`NfQueue.read` when it is readable.

Needs CAP_NET_ADMIN (root). Binding a queue another socket holds is refused (``OSError``,
EPERM), so callers can try another number.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import socket

from mirror.net.nfqueue_messages import (
    NF_ACCEPT,
    NF_DROP,
    NFQA_CFG_F_FAIL_OPEN,
    NLMSG_HDR,
    KernelReply,
    NetlinkError,
    QueuedPacket,
    config_bind,
    config_flags,
    config_params,
    config_queue_maxlen,
    config_unbind,
    parse_messages,
    verdict,
)

__all__ = ["NfQueue", "QueuedPacket"]

log = logging.getLogger("mirror.nfqueue")

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
RECV_SIZE = 0x10000 + 4096          # the largest packet copied (copy range 0xffff) and headers
CONFIG_TIMEOUT = 2.0


class NfQueue:
    """One bound queue. ``read()`` returns the packets pending now; each needs one verdict
    (``accept`` or ``drop``), or it waits in the kernel until the queue is unbound."""

    def __init__(self, number: int, *, maxlen: int = 1024) -> None:
        self.number = number
        self._bound = False
        self._seq = itertools.count(1)
        self._buffer = bytearray(RECV_SIZE)
        self._view = memoryview(self._buffer)
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self._sock.bind((0, 0))
            self._sock.settimeout(CONFIG_TIMEOUT)
            self._request(config_bind(number, next(self._seq)), "bind")
            self._bound = True
            self._request(config_params(number, next(self._seq)), "copy mode")
            self._request(config_queue_maxlen(number, next(self._seq), maxlen), "queue length")
            try:
                self._request(config_flags(number, next(self._seq), NFQA_CFG_F_FAIL_OPEN,
                                           NFQA_CFG_F_FAIL_OPEN), "fail-open")
            except OSError as error:        # kernels before 3.6: packets wait instead
                log.info("NFQUEUE %d: %s", number, error)
            try:
                self._sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
            except OSError:
                pass
            self._sock.setblocking(False)
        except BaseException:
            self._sock.close()              # the kernel unbinds a closed socket's queue
            raise

    def _request(self, message: bytes, what: str) -> None:
        """Send a config request and wait for its acknowledgement (OSError on refusal)."""
        seq = NLMSG_HDR.unpack_from(message)[3]
        self._sock.send(message)
        for _ in range(64):                 # bounded: the answer comes first on a fresh socket
            size = self._sock.recv_into(self._buffer)
            for reply in parse_messages(self._buffer[:size]):
                if isinstance(reply, KernelReply) and reply.seq == seq:
                    if reply.errno:
                        raise OSError(reply.errno, f"NFQUEUE {self.number} {what}: "
                                      f"{os.strerror(reply.errno)}")
                    return
        raise OSError(errno.EPROTO, f"NFQUEUE {self.number} {what}: no answer from the kernel")

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self, limit: int = 256) -> list[QueuedPacket]:
        """The packets pending now (at most ``limit`` datagrams read; never blocks). A
        malformed message is logged and skipped; errors the kernel reports are logged."""
        packets: list[QueuedPacket] = []
        for _ in range(limit):
            try:
                size = self._sock.recv_into(self._buffer)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:
                if error.errno == errno.ENOBUFS:    # the kernel dropped messages for us
                    log.warning("NFQUEUE %d: receive buffer overran", self.number)
                    continue
                raise
            try:
                messages = parse_messages(self._view[:size])
            except NetlinkError as error:
                log.warning("NFQUEUE %d: %s", self.number, error)
                continue
            for message in messages:
                if isinstance(message, QueuedPacket):
                    packets.append(message)
                elif message.errno:
                    log.warning("NFQUEUE %d: the kernel refused a verdict: %s", self.number,
                                os.strerror(message.errno))
        return packets

    def accept(self, packet: QueuedPacket, payload: bytes | None = None) -> None:
        """Let the packet go on, as ``payload`` if given."""
        self._send(verdict(self.number, packet.packet_id, NF_ACCEPT, payload))

    def drop(self, packet: QueuedPacket) -> None:
        self._send(verdict(self.number, packet.packet_id, NF_DROP))

    def _send(self, message: bytes) -> None:
        try:
            self._sock.send(message)
        except BlockingIOError:             # a netlink send does not wait in practice; once
            self._sock.setblocking(True)    # it might, a verdict is never lost
            try:
                self._sock.send(message)
            finally:
                self._sock.setblocking(False)

    def close(self) -> None:
        """Unbind (packets still waiting for a verdict are dropped by the kernel) and close."""
        if self._sock.fileno() < 0:
            return
        try:
            if self._bound:
                self._sock.settimeout(CONFIG_TIMEOUT)
                try:
                    self._request(config_unbind(self.number, next(self._seq)), "unbind")
                except (OSError, NetlinkError) as error:
                    log.info("NFQUEUE %d: %s", self.number, error)
        finally:
            self._sock.close()
