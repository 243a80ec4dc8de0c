"""``mirror echo``: the click command that starts the fingerprint echo server."""

from __future__ import annotations

import click


@click.command("echo")
@click.option("--listen", default="127.0.0.1:8443", show_default=True, metavar="HOST:PORT",
              help="Address to listen on (port 0 picks a free port; the first line says which).")
@click.option("--cert", type=click.Path(exists=True, dir_okay=False), default=None,
              help="PEM certificate chain to present (default: leaves minted per SNI by a local CA).")
@click.option("--key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="PEM private key for --cert (default: the --cert file).")
@click.option("--ca-dir", type=click.Path(file_okay=False), default=None,
              help="Directory of the CA that mints the leaves (created if missing; default: a "
                   "new temporary one).")
def echo_command(listen: str, cert: str | None, key: str | None, ca_dir: str | None) -> None:
    """Answer every request with JSON of everything seen on its connection.

    TCP SYN (JA4T, p0f), the raw ClientHello and every TLS fingerprint, HTTP/2 SETTINGS,
    WINDOW_UPDATE, PRIORITY and header order (Akamai), HTTP/1 header order and case (JA4H).
    TLS with ALPN h2 and http/1.1; cleartext HTTP/1.x and h2 prior knowledge also work.
    """
    from mirror.echo.runner import run
    from mirror.net.listen import parse_host_port

    if key and not cert:
        raise click.UsageError("--key needs --cert")
    try:
        host, port = parse_host_port(listen, 8443)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--listen") from None
    run(host, port, cert, key, ca_dir)
