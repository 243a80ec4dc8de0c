"""``mirror fingerprint FILE``: the click command that fingerprints every connection of a capture.

Options only; the analysis is :mod:`mirror.pcapfile.analyze` and the output (table or JSON,
exit status) :func:`mirror.pcapfile.report.run_fingerprint`.
"""

from __future__ import annotations

import click

from mirror.pcapfile.report import JSON_KEYS, run_fingerprint

__all__ = ["fingerprint_command"]


@click.command("fingerprint")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
@click.option(
    "--keylog",
    type=click.Path(dir_okay=False),
    default=None,
    help="An SSLKEYLOGFILE with TLS 1.3 secrets, to fingerprint HTTP inside TLS "
    "(secrets stored in the pcapng itself are always used).",
)
def fingerprint_command(file: str, as_json: bool, keylog: str | None) -> None:
    """Fingerprint every connection in a pcap / pcapng capture.

    One entry per TCP connection and per QUIC flow, in order of first appearance: JA4T and
    p0f from the SYN; SNI, ALPN, JA3, JA3N and JA4 (+ _r, _o, _ro) from the first
    ClientHello (TCP, also after HTTP CONNECT or SOCKS, and QUIC); JA4H and header order of
    every HTTP/1 or HTTP/2 request; the Akamai HTTP/2 fingerprint.

    With --json, an array of objects with exactly these keys (null when absent): KEYS.
    "http" is a list of {"ja4h": ..., "headers": [names in order, exact case]}.

    Exit status: 0 ok; 1 the capture is damaged or truncated (what could be read is printed
    first); 2 the file is missing or not a capture.
    """
    raise SystemExit(run_fingerprint(file, as_json=as_json, keylog=keylog))


if fingerprint_command.help:
    fingerprint_command.help = fingerprint_command.help.replace("KEYS", ", ".join(JSON_KEYS))
