"""CPU per upstream handshake with and without the ClientHello capture (libcurl debug callback).

Starts ``openssl s_server`` on loopback (its own process, so its CPU is not counted) and opens
``--handshakes`` upstream connections with the curl engine (``MirroredHandshake``) for one
reference hello, alternating short runs with the capture on and off in the same process (so
both see the same machine load); prints the process CPU time per handshake of each side and
the overhead of each run with the capture over the run without it just before.

    python tools/bench_hello_capture.py --handshakes 50 --runs 40
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mirror.emit import upstream
from mirror.emit.relay_plan import relay_plan
from mirror.fingerprint.hello_diff import parse_hello_bytes


class _NoCapture:
    """Stands in for HelloCapture: nothing installed."""

    hello = None

    def install(self, _ssl_ctx) -> None:
        return None

    def forget(self) -> None:
        return None


def _server(directory: Path) -> tuple[subprocess.Popen, int]:
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=bench.test"], check=True, capture_output=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(["openssl", "s_server", "-quiet", "-accept", f"127.0.0.1:{port}",
                               "-cert", cert, "-key", key], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return server, port
        except OSError:
            time.sleep(0.05)
    server.kill()
    raise SystemExit("openssl s_server did not start")


def _run(plan, port: int, count: int, capture: bool) -> float:
    upstream.HelloCapture = real if capture else _NoCapture
    target = upstream.UpstreamTarget("127.0.0.1", port, "bench.test")
    start = time.process_time()
    for _ in range(count):
        connection = upstream.MirroredHandshake(target, plan, verify=False, timeout=5).perform()
        if capture and connection.sent_hello is None:
            raise SystemExit("the capture saw no ClientHello")
        connection.close()
    return (time.process_time() - start) / count


real = upstream.HelloCapture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--handshakes", type=int, default=300)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--hello", default="safari", help="a reference in fingerprints/")
    args = parser.parse_args()
    data = json.loads((ROOT / "fingerprints" / f"{args.hello}.json").read_text())
    plan = relay_plan(parse_hello_bytes(bytes.fromhex(data["tls"]["raw_client_hello"])))
    with tempfile.TemporaryDirectory(prefix="bench-hello-capture") as directory:
        server, port = _server(Path(directory))
        try:
            _run(plan, port, 20, True)                      # warm up both paths
            _run(plan, port, 20, False)
            results: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(args.runs):
                for capture in (False, True):
                    results[capture].append(_run(plan, port, args.handshakes, capture))
        finally:
            server.kill()
            server.wait()
    for capture in (False, True):
        label = "with capture   " if capture else "without capture"
        values = [v * 1e6 for v in results[capture]]
        print(f"{label}: CPU µs/handshake median {statistics.median(values):.0f}, "
              f"mean {statistics.fmean(values):.0f} over {len(values)} runs of "
              f"{args.handshakes}")
    # each run with the capture against the run without it just before (same machine state)
    paired = [(on - off) * 1e6 for off, on in zip(results[False], results[True], strict=True)]
    base = statistics.median(results[False]) * 1e6
    print(f"overhead (paired runs): median {statistics.median(paired):+.0f} µs/handshake "
          f"({statistics.median(paired) / base * 100:+.1f}%), mean {statistics.fmean(paired):+.0f}")

if __name__ == "__main__":
    main()
