"""NSS key-log lines (``--keylog``) for a replay-engine connection, once its handshake is done.

``mirror.replay`` has no public accessor for its traffic secrets yet, so these are read from
the ``ReplayClient``'s attributes by name; a client without them yields no lines (the key log
then lacks this connection, nothing else breaks).
"""

from __future__ import annotations

from mirror.replay.client import ReplayClient

TLS13_LABELS = (("_c_hs", "CLIENT_HANDSHAKE_TRAFFIC_SECRET"),
                ("_s_hs", "SERVER_HANDSHAKE_TRAFFIC_SECRET"),
                ("_c_ap", "CLIENT_TRAFFIC_SECRET_0"),
                ("_s_ap", "SERVER_TRAFFIC_SECRET_0"))
TLS12, TLS13 = 0x0303, 0x0304


def keylog_lines(client: ReplayClient, version: int) -> list[str]:
    """The lines Wireshark needs to decrypt this connection (TLS 1.3: the handshake and first
    application traffic secrets; TLS 1.2: the master secret), keyed by the hello's random."""
    random = client.first.hello.random.hex()
    if version == TLS12:
        master = getattr(client, "_ms", b"")
        return [f"CLIENT_RANDOM {random} {master.hex()}"] if master else []
    lines = []
    for attribute, label in TLS13_LABELS:
        secret = getattr(client, attribute, None)
        if isinstance(secret, bytes | bytearray) and secret:
            lines.append(f"{label} {random} {secret.hex()}")
    return lines
