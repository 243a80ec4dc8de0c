"""The ``mirror`` command line: a click group; each command only wires options to a module.

Commands live with the code they drive and are added here with ``main.add_command`` (or a
``@main.command`` whose body calls into that module) -- keep this file thin.
"""

from __future__ import annotations

import click

from mirror import __version__
from mirror.ca.command import ca
from mirror.check.command import check_command
from mirror.echo.command import echo_command
from mirror.gateway.command import gateway
from mirror.identify_command import identify_command
from mirror.pcapfile.report import JSON_KEYS
from mirror.proxy.command import run_command
from mirror.store.command import captures


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mirror")
def main() -> None:
    """mirror: a transparent proxy that mirrors each client's TCP, TLS and HTTP fingerprints."""


main.add_command(run_command)
main.add_command(ca)
main.add_command(captures)
main.add_command(gateway)
main.add_command(check_command)
main.add_command(echo_command)
main.add_command(identify_command)


@main.command("fingerprint")
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
    from mirror.pcapfile.report import run_fingerprint

    raise SystemExit(run_fingerprint(file, as_json=as_json, keylog=keylog))


if fingerprint_command.help:
    fingerprint_command.help = fingerprint_command.help.replace("KEYS", ", ".join(JSON_KEYS))



if __name__ == "__main__":
    main()
