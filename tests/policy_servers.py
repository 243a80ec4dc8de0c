"""Broken TLS servers for the upstream-policy tests, one per port, run as one process:
``python policy_servers.py SPEC.json``. SPEC: ``{"host": ..., "log": path, "servers": [{"name",
"port", "kind", "cert", "key"}...]}``; kinds:

- ``python``: Python's ``ssl`` with the given chain and key, security level 0 (so it serves a
  1024-bit RSA key or a SHA-1 certificate); answers ``GET`` with 200 and the body ``served``;
- ``openssl-tls1``: ``openssl s_server -tls1 -cipher DEFAULT@SECLEVEL=0`` (TLS 1.0 only),
  ``openssl-tls13``: TLS 1.3 only, ``openssl-tls13-aes128``: TLS 1.3 with TLS_AES_128_GCM_SHA256
  only; everything they read
  they print, into ``<log>.<name>``;
- ``crafted-cipher`` / ``crafted-version``: reads the ClientHello and answers with a hand-built
  TLS 1.2 ServerHello that picks a cipher suite the hello did not offer / version TLS 1.1.

Every byte a server reads after its handshake (``python``), or after its ServerHello
(``crafted``), is logged as ``<name> GOT <hex>`` in ``log``: what reached its HTTP layer.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mirror.wire.tls import read_client_hello

_log_lock = threading.Lock()
OPENSSL_ARGS = {"openssl-tls1": ["-tls1", "-cipher", "DEFAULT@SECLEVEL=0"],
                "openssl-tls13": ["-tls1_3"],
                "openssl-tls13-aes128": ["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"]}


def log(path: str, line: str) -> None:
    with _log_lock, open(path, "a") as f:
        f.write(line + "\n")


def serve_python(sock: socket.socket, spec: dict, log_path: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.load_cert_chain(spec["cert"], spec["key"])
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=_python_conn, args=(context, conn, spec["name"], log_path),
                         daemon=True).start()


def _python_conn(context: ssl.SSLContext, conn: socket.socket, name: str, log_path: str) -> None:
    conn.settimeout(10)
    try:
        with context.wrap_socket(conn, server_side=True) as tls:
            log(log_path, f"{name} HANDSHAKE {tls.version()}")
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                data += chunk
                log(log_path, f"{name} GOT {chunk.hex()}")
            if data.startswith(b"GET"):
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\n"
                            b"served")
                tls.unwrap()                           # close_notify, then the FIN
    except (OSError, ssl.SSLError):
        pass
    finally:
        conn.close()


def serve_crafted(sock: socket.socket, spec: dict, log_path: str) -> None:
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=_crafted_conn, args=(conn, spec["name"], spec["kind"], log_path),
                         daemon=True).start()


def server_hello(hello, kind: str) -> bytes:
    """A TLS 1.2 ServerHello record: an un-offered suite, or version TLS 1.1."""
    if kind == "crafted-cipher":
        version = 0x0303
        cipher = next(c for c in (0x000A, 0xC012, 0x0016, 0x009C, 0x002F, 0xC013, 0xC02F)
                      if c not in hello.cipher_suites)
    else:
        version, cipher = 0x0302, 0xC013           # TLS 1.1, ECDHE-RSA-AES128-SHA
    body = struct.pack("!H", version) + os.urandom(32)
    body += b"\x00"                                 # no session id: a full handshake
    body += struct.pack("!HB", cipher, 0) + struct.pack("!H", 0)
    message = b"\x02" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x03" + struct.pack("!H", len(message)) + message


def _crafted_conn(conn: socket.socket, name: str, kind: str, log_path: str) -> None:
    conn.settimeout(10)
    try:
        data = b""
        hello = None
        while hello is None:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
            hello = read_client_hello(data)
        log(log_path, f"{name} HELLO")
        conn.sendall(server_hello(hello, kind))
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            # an alert (21) is the client refusing; anything else reached past the hello
            log(log_path, f"{name} {'ALERT' if chunk[0] == 21 else 'GOT'} {chunk.hex()}")
    except (OSError, StopIteration) as error:
        log(log_path, f"{name} ERROR {error!r}")
    finally:
        conn.close()


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    log_path = spec["log"]
    children = []

    def stop(*_):
        for child in children:
            child.kill()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    for server in spec["servers"]:
        if server["kind"] in OPENSSL_ARGS:
            out = open(f"{log_path}.{server['name']}", "wb")   # noqa: SIM115 (the child's)
            children.append(subprocess.Popen(
                ["openssl", "s_server", *OPENSSL_ARGS[server["kind"]],
                 "-accept", f"{spec['host']}:{server['port']}", "-cert", server["cert"],
                 "-key", server["key"]], stdin=subprocess.PIPE, stdout=out,
                stderr=subprocess.STDOUT))
            continue
        sock = socket.create_server((spec["host"], server["port"]), backlog=64)
        target = serve_python if server["kind"] == "python" else serve_crafted
        threading.Thread(target=target, args=(sock, server, log_path), daemon=True).start()
    print("ready", flush=True)
    signal.pause()


if __name__ == "__main__":
    main()
