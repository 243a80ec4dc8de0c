"""What the upstream TLS policy costs per handshake (libcurl/BoringSSL engine).

Runs N mirrored handshakes (blocking, one after another) to a local ``openssl s_server`` with
a root -> intermediate -> leaf chain (P-256), and reports CPU and wall time per handshake for:

- ``off``: no policy (no verify callback, no check of the server's choices);
- ``policy``: what the proxy does (verify callback, chain verdict cached per chain, choices);
- ``policy-uncached``: the same with the chain parsed and checked on every handshake.

Modes alternate (off, policy, uncached, three times) so that drift hits them alike.

    python tools/bench_tls_policy.py [N]
"""

from __future__ import annotations

import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from badcerts import ca_pem, make_ca, make_leaf, write_pems

from mirror.emit.relay_plan import relay_plan
from mirror.upstream.connection import UpstreamTarget
from mirror.upstream.curl import native as native_module
from mirror.upstream.curl.handshake import MirroredHandshake
from mirror.wire.tls import read_client_hello


def python_hello() -> bytes:
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="bench.test")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    work = Path(tempfile.mkdtemp(prefix="bench-policy-"))
    root = make_ca("Bench Root")
    intermediate = make_ca("Bench Intermediate", issuer=root)
    cert, key = write_pems(make_leaf(intermediate, "bench.test"), work, "leaf")
    ca = ca_pem(root, work / "root.pem")
    port = 24999
    server = subprocess.Popen(["openssl", "s_server", "-www", "-accept", f"127.0.0.1:{port}",
                               "-cert", str(cert), "-cert_chain", str(cert), "-key", str(key)],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    plan = relay_plan(read_client_hello(python_hello()))
    nat = native_module.native()
    set_verify = nat.ssl["SSL_CTX_set_verify"]
    try:
        for mode in ("off", "policy", "policy-uncached") * 3:
            nat.ssl["SSL_CTX_set_verify"] = (set_verify if mode.startswith("policy")
                                             else lambda *_: None)
            nat.CHAIN_CACHE = 0 if mode == "policy-uncached" else 256
            nat._chains.clear()
            use = plan if mode.startswith("policy") else _without_hello(plan)
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(count):
                handshake = MirroredHandshake(UpstreamTarget("127.0.0.1", port, "bench.test"),
                                              use, ca_file=str(ca), timeout=5)
                handshake.perform().close()
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            print(f"{mode:16} {count} handshakes: {1000 * cpu / count:.3f} ms CPU, "
                  f"{1000 * wall / count:.3f} ms wall per handshake", flush=True)
    finally:
        server.kill()


def _without_hello(plan):
    import dataclasses

    return dataclasses.replace(plan, hello=None)


if __name__ == "__main__":
    main()
