"""``mirror gateway up|down``: install or remove the REDIRECT / TPROXY set-up (or print it)."""

from __future__ import annotations

import subprocess
import sys

import click

from mirror.gateway.check import CheckSpec, check_gateway
from mirror.gateway.rules import GatewaySpec, down_commands, up_commands


def _ports(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise click.BadParameter("a comma-separated list of ports", param_hint="--ports") from None


def _options(function):
    function = click.option("--mode", type=click.Choice(["redirect", "tproxy"]), default="redirect",
                            show_default=True, help="iptables REDIRECT (nat) or TPROXY (mangle "
                            "+ policy routing).")(function)
    function = click.option("--in", "interface", default=None, metavar="IFACE",
                            help="Only traffic arriving on this interface [default: any].")(function)
    function = click.option("--ports", default="80,443", show_default=True,
                            help="Destination ports to intercept.")(function)
    function = click.option("--to-port", type=click.IntRange(1, 65535), default=8081,
                            show_default=True, help="The port `mirror run --mode transparent` "
                            "listens on.")(function)
    return click.option("--print", "print_only", is_flag=True,
                        help="Print the commands instead of running them.")(function)


def _run(commands, print_only: bool) -> None:
    for command in commands:
        if print_only:
            click.echo(str(command))
            continue
        result = subprocess.run(command.argv, capture_output=True, text=True, check=False)
        if result.returncode and command.must_succeed:
            click.echo(f"mirror gateway: `{command}` failed: {result.stderr.strip()}", err=True)
            sys.exit(1)


@click.group("gateway")
def gateway() -> None:
    """Send a gateway's traffic to the transparent proxy (iptables/ip6tables, ip rule/route).

    Only objects of mirror's own are touched: the MIRROR_GW chain and its jump from PREROUTING,
    for TPROXY an fwmark rule and table 7707, and for --quic block the MIRROR_GW_QUIC chain and
    its jump from FORWARD. `up` is idempotent; `down` removes all of it. `check` says what on
    this machine stops full mirroring.
    """


QUIC_SAID = {
    "block": "QUIC (UDP 443){where}: blocked, so browsers fall back to TCP, where they are "
             "mirrored (--quic pass lets it through unmirrored)",
    "pass": "QUIC (UDP 443){where}: passed through, NOT mirrored (the proxy does not mirror "
            "QUIC yet; --quic block makes browsers use TCP)",
}


@gateway.command("up")
@_options
@click.option("--quic", type=click.Choice(["block", "pass"]), default="block", show_default=True,
              help="UDP 443 from the inside: block it (browsers fall back to TCP, which is "
              "mirrored) or pass it (QUIC is not mirrored).")
def up(mode, interface, ports, to_port, print_only, quic) -> None:
    """Install the rules (replacing a previous `up`)."""
    try:
        commands = up_commands(GatewaySpec(mode, to_port, _ports(ports), interface, quic))
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    _run(commands, print_only)
    said = QUIC_SAID[quic].format(where=f" from {interface}" if interface else "")
    click.echo(f"# {said}" if print_only else said)


@gateway.command("down")
@_options
def down(mode, interface, ports, to_port, print_only) -> None:
    """Remove what `up` installed (nothing else)."""
    _run(down_commands(GatewaySpec(mode, to_port, _ports(ports), interface)), print_only)


@gateway.command("check")
@click.option("--mode", type=click.Choice(["redirect", "tproxy"]), default="redirect",
              show_default=True, help="The set-up `mirror gateway up` will make.")
@click.option("--to-port", type=click.IntRange(1, 65535), default=8081, show_default=True,
              help="The port `mirror run --mode transparent` will listen on.")
@click.option("--no-ipv6", "no_ipv6", is_flag=True,
              help="An IPv4-only gateway: skip ip6tables and IPv6 forwarding.")
def check(mode, to_port, no_ipv6) -> None:
    """Say what on this machine stops full mirroring (one line per problem, with its fix);
    exit 1 if anything does. Run it before `mirror run` (which will hold the port)."""
    problems = check_gateway(CheckSpec(mode, to_port, ipv6=not no_ipv6))
    for problem in problems:
        click.echo(str(problem))
    if problems:
        sys.exit(1)
    click.echo(f"ok: nothing here stops full mirroring ({mode}, port {to_port}; TCP SYNs "
               "rewritten, TLS and HTTP mirrored)")
