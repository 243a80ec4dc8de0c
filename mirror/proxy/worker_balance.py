"""Even out client connections between ``--workers`` processes.

Every worker listens on the same ports (SO_REUSEPORT), and the kernel picks a worker for each
new connection by a hash of its addresses. Over many connections that spreads evenly; over a
few long, busy ones (ten HTTP/2 clients, say) it often does not: 7 on one worker and 3 on the
other is as likely as 5 and 5, and the worker with seven is the bottleneck while the other
idles once its clients are served.

So a worker that accepts a connection while it holds more than the least loaded worker passes
the socket to that worker (``SCM_RIGHTS`` over a Unix datagram socket, before a byte of it is
read) instead of serving it; a connection is handed on at most once. The load of a worker is
the connections it serves plus those on their way to it, read from a small table in shared
memory in which each cell has one writer. The counts stay within one of each other, so ten
clients split 5/5. The price: passing a connection on costs some 70 µs of CPU more than
serving it where it arrived (sender and receiver together, on a busy machine), and with many
short connections the counts drift apart and back all the time, so a good share of them is
passed on (about 45 % when new connections arrive at a steady rate): a few per cent of the
millisecond or so that the handshakes of a new connection cost.

``WorkerTable.create(n)`` is made before the workers are forked; each worker then makes its
``Balancer`` (``table.balancer(index, loop)``), wraps each listener's protocol factory with
``arrivals`` and reports its connection count with ``publish``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import mmap
import socket
from collections.abc import Callable

log = logging.getLogger("mirror.proxy.workers")

CELL = 8                       # one signed 64-bit count per cell
STOPPING = 1 << 60             # the live count of a worker that takes no more connections
RECEIVE_BATCH = 32             # sockets taken from the inbox per wake-up, at most


class WorkerTable:
    """Shared counts and the inboxes of ``n`` workers, made before they are forked.

    Cells: ``live[w]`` (connections worker w serves; written by w), ``sent[s][w]`` (handed by
    s to w; written by s), ``received[w][s]`` (taken by w from s; written by w). A worker's
    load is ``live[w]`` plus what was sent to it and not yet taken."""

    def __init__(self, count: int, memory: mmap.mmap,
                 inboxes: list[tuple[socket.socket, socket.socket]]) -> None:
        self.count = count
        self.cells = memoryview(memory).cast("q")
        self.memory = memory
        self.inboxes = inboxes          # (read end, write end) per worker

    @classmethod
    def create(cls, count: int) -> WorkerTable:
        memory = mmap.mmap(-1, CELL * (count + 2 * count * count))  # anonymous, shared on fork
        inboxes = []
        for _ in range(count):
            read_end, write_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            read_end.setblocking(False)
            write_end.setblocking(False)
            inboxes.append((read_end, write_end))
        return cls(count, memory, inboxes)

    def sent_cell(self, sender: int, target: int) -> int:
        return self.count + sender * self.count + target

    def received_cell(self, worker: int, sender: int) -> int:
        return self.count + self.count * self.count + worker * self.count + sender

    def load(self, worker: int) -> int:
        cells = self.cells
        waiting = sum(cells[self.sent_cell(sender, worker)]
                      - cells[self.received_cell(worker, sender)] for sender in range(self.count))
        return cells[worker] + waiting

    def balancer(self, index: int, loop: asyncio.AbstractEventLoop) -> Balancer:
        """Worker ``index``'s side: it keeps its own inbox's read end and closes the others'
        (so that a worker that has exited refuses what is sent to it)."""
        for other, (read_end, _) in enumerate(self.inboxes):
            if other != index:
                read_end.close()
        return Balancer(self, index, loop)


class Balancer:
    """One worker's side of the table: decides, per accepted connection, to serve it or to
    pass it to the least loaded worker, and serves the connections passed to it."""

    def __init__(self, table: WorkerTable, index: int, loop: asyncio.AbstractEventLoop) -> None:
        self.table = table
        self.index = index
        self.loop = loop
        self.inbox = table.inboxes[index][0]
        self.factories: list[Callable[[], asyncio.BaseProtocol]] = []
        self.gone: set[int] = set()          # workers whose inbox refused: never tried again
        self._tasks: set[asyncio.Task] = set()
        self._reading = False
        self.stopping = False
        self.passed = self.taken_in = 0       # connections passed on, and taken from others

    # --- accepting ---------------------------------------------------------------------------
    def arrivals(self, factory: Callable[[], asyncio.BaseProtocol]) -> Callable[[], Arrival]:
        """A protocol factory for a listener that first offers each connection to the
        balancer; ``factory`` makes the protocol of a connection served here."""
        self.factories.append(factory)
        listener = len(self.factories) - 1
        if not self._reading:
            self.loop.add_reader(self.inbox.fileno(), self._take)
            self._reading = True
        return lambda: Arrival(self, listener)

    def publish(self, live: int) -> None:
        """This worker now serves ``live`` connections."""
        if not self.stopping:
            self.table.cells[self.index] = live

    def hand_off(self, transport: asyncio.BaseTransport, listener: int) -> bool:
        """Pass the connection to the least loaded worker when this one holds more; True when
        it went (the caller then drops its transport; the connection is the other's now)."""
        table = self.table
        # the worker serving fewest, then both loads with what is on its way to each: a few
        # reads however many workers (a full comparison would read every pair's cells)
        live = table.cells[:table.count].tolist()
        target = min((worker for worker in range(table.count)
                      if worker != self.index and worker not in self.gone),
                     key=live.__getitem__, default=None)
        if target is None or table.load(self.index) <= table.load(target):
            return False
        sock = transport.get_extra_info("socket")
        if sock is None:
            return False
        try:
            socket.send_fds(table.inboxes[target][1], [bytes((listener, self.index))],
                            [sock.fileno()])
        except BlockingIOError:                  # its inbox is full: serve it here
            return False
        except OSError:                          # that worker has exited
            self.gone.add(target)
            return False
        table.cells[table.sent_cell(self.index, target)] += 1
        self.passed += 1
        return True

    # --- taking ------------------------------------------------------------------------------
    def _take(self) -> None:
        for _ in range(RECEIVE_BATCH):
            try:
                message, fds, _, _ = socket.recv_fds(self.inbox, 2, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close()
                return
            if not fds:
                continue
            for extra in fds[1:]:
                socket.close(extra)
            if len(message) != 2 or message[1] >= self.table.count:
                socket.close(fds[0])             # from no worker: not counted anywhere
                continue
            listener, sender = message
            sock = None
            if listener < len(self.factories):
                with contextlib.suppress(OSError):
                    sock = socket.socket(fileno=fds[0])
            if sock is None:                     # dropped: not on its way here any more
                socket.close(fds[0])
                self.taken(sender)
                continue
            delivery = Delivery(self, listener, sender)
            task = self.loop.create_task(
                self.loop.connect_accepted_socket(functools.partial(_same, delivery), sock=sock))
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._settled, delivery=delivery))

    def taken(self, sender: int) -> None:
        """A connection from ``sender`` is this worker's now (or failed): no longer counted as
        on its way here."""
        table = self.table
        table.cells[table.received_cell(self.index, sender)] += 1
        self.taken_in += 1

    def _settled(self, task: asyncio.Task, *, delivery: Delivery) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()                     # a client gone before it was served: no error
        if not delivery.counted:
            delivery.counted = True
            self.taken(delivery.sender)

    def close(self) -> None:
        """The worker is stopping: others pass it nothing more; what was already passed to it
        is taken (and drained with the rest)."""
        if self.stopping:
            return
        self.stopping = True
        self.table.cells[self.index] = STOPPING
        if self._reading:
            self._take()
            self.loop.remove_reader(self.inbox.fileno())
            self._reading = False
            log.info("worker %d: %d connections passed to another worker, %d taken from one",
                     self.index, self.passed, self.taken_in)


class Arrival(asyncio.Protocol):
    """The first protocol of an accepted connection: passes it on, or becomes the real one."""

    def __init__(self, balancer: Balancer, listener: int) -> None:
        self.balancer = balancer
        self.listener = listener

    def connection_made(self, transport) -> None:
        balancer = self.balancer
        if balancer.hand_off(transport, self.listener):
            transport.abort()                    # the other worker holds the socket now
            return
        protocol = balancer.factories[self.listener]()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)

    def connection_lost(self, exc) -> None:
        pass


class Delivery(asyncio.Protocol):
    """The first protocol of a connection another worker passed here: becomes the real one."""

    def __init__(self, balancer: Balancer, listener: int, sender: int) -> None:
        self.balancer = balancer
        self.listener = listener
        self.sender = sender
        self.counted = False

    def connection_made(self, transport) -> None:
        protocol = self.balancer.factories[self.listener]()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)      # counted in this worker's live count first,
        self.counted = True                      # then no longer as on its way
        self.balancer.taken(self.sender)

    def connection_lost(self, exc) -> None:
        pass


def _same(delivery: Delivery) -> Delivery:
    return delivery
