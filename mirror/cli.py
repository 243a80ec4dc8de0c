"""The ``mirror`` command line: a click group; each command only wires options to a module.

Commands live with the code they drive and are added here with ``main.add_command`` -- keep
this file thin.
"""

from __future__ import annotations

import click

from mirror import __version__
from mirror.ca.command import ca
from mirror.check.command import check_command
from mirror.echo.command import echo_command
from mirror.gateway.command import gateway
from mirror.identify.command import identify_command
from mirror.identify.diff_command import diff_command
from mirror.pcapfile.command import fingerprint_command
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
main.add_command(fingerprint_command)
captures.add_command(diff_command)  # `captures diff`: compares records, lives with identify


if __name__ == "__main__":
    main()
