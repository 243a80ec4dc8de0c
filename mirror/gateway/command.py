"""``mirror gateway up|down``: install or remove the REDIRECT / TPROXY set-up (or print it)."""

from __future__ import annotations

import subprocess
import sys

import click

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
    and for TPROXY an fwmark rule and table 7707. `up` is idempotent; `down` removes all of it.
    """


@gateway.command("up")
@_options
def up(mode, interface, ports, to_port, print_only) -> None:
    """Install the rules (replacing a previous `up`)."""
    try:
        commands = up_commands(GatewaySpec(mode, to_port, _ports(ports), interface))
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    _run(commands, print_only)


@gateway.command("down")
@_options
def down(mode, interface, ports, to_port, print_only) -> None:
    """Remove what `up` installed (nothing else)."""
    _run(down_commands(GatewaySpec(mode, to_port, _ports(ports), interface)), print_only)
