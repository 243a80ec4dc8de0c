"""Offline analysis of packet captures: read pcap / pcapng, reassemble, fingerprint.

* :mod:`mirror.pcapfile.reader` -- frames and innermost IP packets from a capture file;
  :class:`PcapError` and its two subclasses are the only errors it raises.
* :mod:`mirror.pcapfile.decap` -- link layers and tunnels (VLAN, SLL, GRE, VXLAN, Geneve...).
* :mod:`mirror.pcapfile.streams` -- TCP reassembly per connection, UDP datagrams per flow.
* :mod:`mirror.pcapfile.analyze` -- fingerprints per connection (JA4T, p0f, JA3, JA4, JA4H,
  Akamai h2, QUIC JA4), with :mod:`~mirror.pcapfile.tunnels` (SOCKS prefixes),
  :mod:`~mirror.pcapfile.lenient_http` (heads the strict parser refuses) and
  :mod:`~mirror.pcapfile.tlsdecrypt` (TLS 1.3 application data from key-log secrets).
* :mod:`mirror.pcapfile.report` -- the ``mirror fingerprint`` command's JSON and table output;
  :mod:`mirror.pcapfile.command` -- the command itself.
* :mod:`mirror.pcapfile.connection_view` -- one connection as a fingerprint view
  (``mirror identify --pcap``).
"""

from mirror.pcapfile.reader import (
    CaptureReader,
    CorruptCaptureError,
    NotACaptureError,
    PcapError,
    read_packets,
)

__all__ = ["CaptureReader", "CorruptCaptureError", "NotACaptureError", "PcapError", "read_packets"]
