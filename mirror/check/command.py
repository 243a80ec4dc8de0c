"""``mirror check``: how faithfully this machine's proxy mirrors real clients, with a score."""

from __future__ import annotations

import json
import sys

import click

from mirror.check.compare import FIELDS

DEFAULT_CLIENTS = "chrome,firefox,safari,chromium"


def _usage_error(message: str) -> None:
    click.echo(f"mirror check: error: {message}", err=True)
    sys.exit(2)


@click.command("check")
@click.option("--clients", default=DEFAULT_CLIENTS, show_default=True,
              help="Comma-separated: curl_cffi families (chrome, edge, firefox, safari, "
                   "safari_ios, tor, chrome_android...), chromium, curl, httpx.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.9, show_default=True,
              help="Exit 1 when the score (share of fields that came out the same) is below.")
@click.option("--tls-engine", type=click.Choice(["auto", "replay", "boringssl"]), default="auto",
              show_default=True, help="The proxy's upstream TLS engine (as mirror run's).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def check_command(clients: str, threshold: float, tls_engine: str, as_json: bool) -> None:
    """Start an echo server and the proxy (explicit mode on loopback), fetch with each client
    directly and through the proxy, and compare what the server saw, field by field.

    A field is "same", "same but padding/GREASE" (per-connection randomness, declared), or
    "declared" (the proxy said beforehand it could not send it exactly, and why). Anything else
    is a failure. Exit status: 0 at or above --threshold with no failure, 1 otherwise, 2 for an
    unknown client or one this machine lacks (the message says how to install it).
    """
    from rich.console import Console
    from rich.table import Table

    from mirror.check.clients import (
        OWN_CLIENTS,
        curl_cffi_names,
        missing_requirement,
        unknown_clients,
    )
    from mirror.check.runner import CheckError, run_check

    names = [c.strip() for c in clients.split(",") if c.strip()]
    if not names:
        _usage_error("--clients names no client")
    unknown = unknown_clients(names)
    if unknown:
        families, _ = curl_cffi_names()
        _usage_error(f"unknown client{'s' if len(unknown) > 1 else ''} "
                     f"{', '.join(repr(n) for n in unknown)}; valid: "
                     f"{', '.join([*OWN_CLIENTS, *families])}, or an exact curl_cffi target "
                     "such as chrome152")
    missing = [reason for reason in map(missing_requirement, names) if reason]
    if missing:
        _usage_error("; ".join(missing))
    err = Console(stderr=True)
    try:
        with err.status("starting the echo server and the proxy") as status:
            report = run_check(names, progress=lambda text: status.update(text),
                                   tls_engine=tls_engine)
    except CheckError as error:
        err.print(f"[red]mirror check: {error}[/red]")
        sys.exit(2)
    if as_json:
        click.echo(json.dumps({
            "score": report.score, "threshold": threshold, "failed": report.failed,
            "clients": [{"client": r.client, "error": r.error,
                         "fields": {f: {"status": v.status, "detail": v.detail}
                                    for f, v in r.verdicts.items()}} for r in report.results]},
            indent=2))
    else:
        table = Table(title="What the server saw, direct vs through the proxy")
        table.add_column("field")
        for r in report.results:
            table.add_column(r.client)
        style = {"same": "green", "DIFFERENT": "bold red"}
        for name in FIELDS:
            cells = []
            for r in report.results:
                v = r.verdicts.get(name)
                cells.append("[red]error[/red]" if r.error else "-" if v is None else
                             f"[{style.get(v.status, 'yellow')}]{v.status}[/]")
            table.add_row(name, *cells)
        console = Console()
        console.print(table)
        for r in report.results:
            if r.error:
                console.print(f"[red]{r.client}: {r.error}[/red]")
            for name, v in r.verdicts.items():
                if v.status in ("declared", "DIFFERENT"):
                    console.print(f"{r.client} {name}: {v}")
        console.print(f"score {report.score:.1%} (threshold {threshold:.0%})"
                      + (f"; failed: {', '.join(report.failed)}" if report.failed else ""))
    sys.exit(0 if report.score >= threshold and not report.failed else 1)
