"""Make this network namespace's outgoing SYNs to port 443 look like another OS's (test helper).

Run inside a client namespace: ``python tests/syn_disguise.py WINDOW TTL OPTIONS`` where
OPTIONS is a scapy option list in Python syntax, e.g. macOS's
``[("MSS",1460),("NOP",None),("WScale",6),("NOP",None),("NOP",None),("Timestamp",(1,0)),
("SAckOK",b""),("EOL",None)]``. A SYN with that window, TTL and option layout is crafted with
scapy; an NFQUEUE rule in the namespace hands every SYN to this process, which rewrites it to
the crafted layout with mirror's own SYN rewriter (keeping the kernel's sequence number,
timestamps and window-scale value, so the connection stays correct). Prints "ready", runs until
SIGTERM, then removes its rule.
"""

from __future__ import annotations

import ast
import select
import signal
import subprocess
import sys

from scapy.all import IP, TCP, raw

from mirror.emit.syn_rewrite import rewrite_syn
from mirror.net.nfqueue import NfQueue
from mirror.wire.tcp import parse_syn

QUEUE = 7801
RULE = ["OUTPUT", "-p", "tcp", "--tcp-flags", "SYN,ACK,RST", "SYN", "--dport", "443",
        "-j", "NFQUEUE", "--queue-num", str(QUEUE)]


def main() -> None:
    window, ttl, options = int(sys.argv[1]), int(sys.argv[2]), ast.literal_eval(sys.argv[3])
    target = parse_syn(raw(IP(src="198.18.0.1", dst="198.18.0.2", ttl=ttl, flags="DF", id=0)
                           / TCP(sport=1, dport=443, flags="S", window=window, options=options)))

    queue = NfQueue(QUEUE)
    subprocess.run(["iptables", "-w", "5", "-t", "mangle", "-A", *RULE], check=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    try:
        while True:
            select.select([queue], [], [])
            for packet in queue.read():
                payload = None
                try:
                    payload = rewrite_syn(packet.payload, target, hops=0).packet
                finally:
                    queue.accept(packet, payload)
    finally:
        subprocess.run(["iptables", "-w", "5", "-t", "mangle", "-D", *RULE], check=False)
        queue.close()


if __name__ == "__main__":
    main()
