"""The firewall and routing set-up that sends a gateway's traffic to `mirror run --mode
transparent`, as command lines (pure: it runs nothing).

Everything lives in objects that are ours alone, so that `down` removes exactly what `up` made
and never a rule someone else wrote:
- a chain ``MIRROR_GW`` (nat for REDIRECT, mangle for TPROXY) in iptables and ip6tables, with
  one jump to it from PREROUTING;
- for TPROXY, a policy-routing rule (fwmark ``MARK``, priority ``RULE_PRIORITY``) and a local
  default route in routing table ``TABLE``, for IPv4 and IPv6;
- with ``quic="block"`` (the default), a chain ``QUIC_CHAIN`` in the filter table, jumped to from
  FORWARD, dropping UDP to port 443 arriving on the inside interface: the proxy does not mirror
  QUIC, and browsers whose QUIC fails fall back to TCP, where they are mirrored.
``up`` is ``down`` followed by the additions, so running it twice leaves one copy.
"""

from __future__ import annotations

from dataclasses import dataclass

CHAIN = "MIRROR_GW"
QUIC_CHAIN = "MIRROR_GW_QUIC"
QUIC_PORT = "443"
MARK = "0x6d6972/0xffffff"       # "mir"
TABLE = "7707"
RULE_PRIORITY = "7707"


@dataclass(frozen=True, slots=True)
class GatewaySpec:
    mode: str                       # "redirect" | "tproxy"
    to_port: int
    ports: tuple[int, ...] = (80, 443)
    interface: str | None = None
    quic: str = "block"             # "block" | "pass": what becomes of UDP 443 from the inside


@dataclass(frozen=True, slots=True)
class Command:
    argv: tuple[str, ...]
    must_succeed: bool = True       # removal steps may find nothing to remove

    def __str__(self) -> str:
        return " ".join(self.argv)


def _table(spec: GatewaySpec) -> str:
    return "nat" if spec.mode == "redirect" else "mangle"


def down_commands(spec: GatewaySpec) -> list[Command]:
    out = []
    for tool in ("iptables", "ip6tables"):
        base = (tool, "-w", "5", "-t", _table(spec))
        out += [Command((*base, "-D", "PREROUTING", "-j", CHAIN), False),
                Command((*base, "-F", CHAIN), False),
                Command((*base, "-X", CHAIN), False)]
        quic = (tool, "-w", "5", "-t", "filter")
        out += [Command((*quic, "-D", "FORWARD", "-j", QUIC_CHAIN), False),
                Command((*quic, "-F", QUIC_CHAIN), False),
                Command((*quic, "-X", QUIC_CHAIN), False)]
    if spec.mode == "tproxy":
        for family in ("-4", "-6"):
            out += [Command(("ip", family, "rule", "del", "fwmark", MARK, "lookup", TABLE,
                             "priority", RULE_PRIORITY), False),
                    Command(("ip", family, "route", "flush", "table", TABLE), False)]
    return out


def up_commands(spec: GatewaySpec) -> list[Command]:
    if spec.mode not in ("redirect", "tproxy"):
        raise ValueError(f"mode must be redirect or tproxy, not {spec.mode!r}")
    if not spec.ports or not all(0 < p < 65536 for p in spec.ports):
        raise ValueError("ports must be 1-65535")
    if spec.quic not in ("block", "pass"):
        raise ValueError(f"quic must be block or pass, not {spec.quic!r}")
    ports = ",".join(map(str, spec.ports))
    match = (*(("-i", spec.interface) if spec.interface else ()), "-p", "tcp", "-m", "multiport",
             "--dports", ports)
    out = down_commands(spec)
    for tool in ("iptables", "ip6tables"):
        base = (tool, "-w", "5", "-t", _table(spec))
        out.append(Command((*base, "-N", CHAIN)))
        if spec.mode == "redirect":
            out.append(Command((*base, "-A", CHAIN, *match, "-j", "REDIRECT", "--to-ports",
                                str(spec.to_port))))
        else:
            # packets of connections the proxy already holds (replies to spoofed sources too)
            out.append(Command((*base, "-A", CHAIN, "-p", "tcp", "-m", "socket", "--transparent",
                                "-j", "MARK", "--set-xmark", MARK)))
            out.append(Command((*base, "-A", CHAIN, "-p", "tcp", "-m", "mark", "--mark", MARK,
                                "-j", "ACCEPT")))
            out.append(Command((*base, "-A", CHAIN, *match, "-j", "TPROXY", "--on-port",
                                str(spec.to_port), "--tproxy-mark", MARK)))
        out.append(Command((*base, "-I", "PREROUTING", "-j", CHAIN)))
        if spec.quic == "block":
            quic = (tool, "-w", "5", "-t", "filter")
            out += [Command((*quic, "-N", QUIC_CHAIN)),
                    Command((*quic, "-A", QUIC_CHAIN,
                             *(("-i", spec.interface) if spec.interface else ()), "-p", "udp",
                             "--dport", QUIC_PORT, "-j", "DROP")),
                    Command((*quic, "-I", "FORWARD", "-j", QUIC_CHAIN))]
    if spec.mode == "tproxy":
        for family, everything in (("-4", "0.0.0.0/0"), ("-6", "::/0")):
            out += [Command(("ip", family, "rule", "add", "fwmark", MARK, "lookup", TABLE,
                             "priority", RULE_PRIORITY)),
                    Command(("ip", family, "route", "add", "local", everything, "dev", "lo",
                             "table", TABLE))]
    return out
