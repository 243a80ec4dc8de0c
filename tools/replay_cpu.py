"""CPU per TLS handshake of the replay engine, beside curl_cffi (BoringSSL) on the same server.

    python tools/replay_cpu.py                 # 200 handshakes each, interleaved in rounds of 20
    python tools/replay_cpu.py --count 50 --client firefox

Starts ``openssl s_server`` on loopback (ECDSA P-256 and RSA leaves of a throwaway CA; TLS 1.3
and TLS 1.2), takes a real ClientHello from curl_cffi's target, and measures
``time.process_time()`` around the engine's calls (construction with the hello rewrite,
``start``, ``receive``, ``close``) and around curl_cffi's ``perform`` (CONNECT_ONLY, the same
target and trust). The two alternate in rounds so both see the same machine load. Server time
is not counted: the server is another process.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import capture_client_hello, native_target
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import Store
from curl_cffi import Curl, CurlOpt
from replay_pki import Pki
from replay_servers import NAME, openssl_server

from mirror.replay.client import HandshakeComplete, ReplayClient, ReplayConfig
from mirror.wire.tls import read_client_hello

ROUND = 20


def replay_handshake(port: int, hello, store: Store) -> float:
    started = time.process_time()
    client = ReplayClient(ReplayConfig(client_hello=hello, trust=store))
    first = client.start()
    cpu = time.process_time() - started
    with socket.create_connection(("127.0.0.1", port), 5) as sock:
        sock.sendall(first)
        done = False
        while not done:
            chunk = sock.recv(65536)
            if not chunk:
                raise SystemExit("the server closed during the handshake")
            started = time.process_time()
            events = client.receive(chunk)
            out = client.data_to_send()
            done = any(isinstance(event, HandshakeComplete) for event in events)
            if done:
                out += client.close()
            cpu += time.process_time() - started
            sock.sendall(out)
    return cpu


def curl_cffi_handshake(port: int, target: str, ca_file: Path) -> float:
    curl = Curl()
    try:
        curl.setopt(CurlOpt.URL, f"https://{NAME}:{port}/")
        curl.setopt(CurlOpt.RESOLVE, [f"{NAME}:{port}:127.0.0.1"])
        curl.setopt(CurlOpt.CAINFO, str(ca_file))
        curl.setopt(CurlOpt.CONNECT_ONLY, 1)
        curl.impersonate(target)
        started = time.process_time()
        curl.perform()
        return time.process_time() - started
    finally:
        curl.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="handshakes per engine and server")
    parser.add_argument("--client", default="chrome", help="curl_cffi target family")
    args = parser.parse_args()
    pki = Pki()
    store = Store([pki.cert])
    target = native_target(args.client)
    hello = read_client_hello(capture_client_hello(args.client, NAME))
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        ca_file = directory / "ca.pem"
        ca_file.write_bytes(pki.cert.public_bytes(serialization.Encoding.PEM))
        for kind, options in (("p256", []), ("rsa", []), ("p256", ["-tls1_2"])):
            cert, key = Pki.write(directory, *pki.leaf(kind=kind), stem=kind)
            with openssl_server(cert, key, *options) as port:
                totals = {"replay": 0.0, "curl_cffi": 0.0}
                done = 0
                while done < args.count:
                    batch = min(ROUND, args.count - done)
                    for _ in range(batch):
                        totals["replay"] += replay_handshake(port, hello, store)
                    for _ in range(batch):
                        totals["curl_cffi"] += curl_cffi_handshake(port, target, ca_file)
                    done += batch
                version = "TLS 1.2" if "-tls1_2" in options else "TLS 1.3"
                print(f"{args.client} {kind:4} {version}: replay "
                      f"{totals['replay'] / done * 1000:.2f} ms, curl_cffi "
                      f"{totals['curl_cffi'] / done * 1000:.2f} ms CPU per handshake "
                      f"({done} each)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
