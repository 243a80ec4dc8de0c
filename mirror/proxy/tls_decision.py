"""What to do with a client's ClientHello, sans-I/O: mirror it, refuse it, or pass it through.

Two questions, in this order (the relay plan is only made when the first says nothing):

1. :func:`passthrough_before_plan` - hosts the proxy must not terminate: the SNI or the
   destination matches ``--ignore-hosts`` ("ignore-host"), or a client refused the proxy's
   certificate for this host and port before ("unterminable").
2. :func:`decide_for_plan` - from the relay plan's per-field fidelity and ``--on-mismatch``:
   when some field cannot be sent ("impossible"), ``strict`` refuses (:class:`StrictRefusal`),
   ``passthrough`` relays the hello untouched, ``warn`` mirrors it anyway and says what differs
   (:class:`MirrorHello` with ``differences``). Otherwise the hello is mirrored.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class MirrorHello:
    """Mirror the hello upstream; ``differences`` lists the fields it cannot carry ("": none
    impossible)."""

    differences: str = ""


@dataclass(frozen=True, slots=True)
class PassThrough:
    """Relay the client's TLS untouched. ``reason``: "ignore-host", "unterminable" or
    "on-mismatch" (then ``differences`` says why)."""

    reason: str
    differences: str = ""


@dataclass(frozen=True, slots=True)
class StrictRefusal:
    """``--on-mismatch strict`` refuses a hello that cannot be mirrored exactly."""

    message: str
    stage: str = "strict"


TlsDecision = MirrorHello | PassThrough | StrictRefusal


def passthrough_before_plan(sni: str | None, host: str, port: int,
                            ignore_hosts: re.Pattern | None,
                            is_unterminable: Callable[[str, int], bool]) -> PassThrough | None:
    """Pass through without a plan when ``--ignore-hosts`` matches the SNI or host, or the
    host (the SNI, else the destination) is known to refuse our certificate."""
    if ignore_hosts is not None and any(ignore_hosts.search(name) for name in (sni, host) if name):
        return PassThrough("ignore-host")
    if is_unterminable(sni or host, port):
        return PassThrough("unterminable")
    return None


def impossible_fields(fidelity: Mapping[str, Any]) -> str:
    """"name: why; ..." for each field of a plan's fidelity whose status is "impossible"."""
    return "; ".join(f"{name}: {field.detail}" for name, field in fidelity.items()
                     if field.status == "impossible")


def decide_for_plan(fidelity: Mapping[str, Any], on_mismatch: str,
                    replayed: bool = False) -> TlsDecision:
    """``fidelity``: the plan's FieldFidelity per field (what BoringSSL would send);
    ``on_mismatch``: strict | warn | passthrough; ``replayed``: the replay engine sends the
    client's own hello, so no field is lost and there is nothing to decide."""
    if replayed:
        return MirrorHello()
    summary = impossible_fields(fidelity)
    if not summary:
        return MirrorHello()
    if on_mismatch == "strict":
        return StrictRefusal(f"refused (--on-mismatch strict): this ClientHello cannot be "
                             f"mirrored exactly: {summary}")
    if on_mismatch == "passthrough":
        return PassThrough("on-mismatch", summary)
    return MirrorHello(summary)
