"""--upstream-ca: the CA file is loaded once into a store every upstream handshake shares, and
loaded again when the file changes under the running proxy."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from conftest import running_echo
from fidelity_helpers import NAME
from proxyrun import running_proxy

SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def fetch(proxy, port: int, path: str):
    from curl_cffi import requests

    with requests.Session(impersonate="chrome", verify=str(proxy.ca_cert), timeout=20,
                          proxy=proxy.url("http")) as session:   # a new connection each time
        return session.get(f"https://{NAME}:{port}{path}")


def test_a_ca_bundle_is_shared_and_reloaded_when_it_changes(tmp_path):
    with running_echo(tmp_path / "echo-ca") as (port, echo_ca):
        bundle = tmp_path / "bundle.pem"
        system = Path(SYSTEM_BUNDLE).read_bytes() if os.path.exists(SYSTEM_BUNDLE) else b""
        bundle.write_bytes(system + echo_ca.read_bytes())          # the right CA, last
        extra = ["--upstream-ca", str(bundle), "--resolve", f"{NAME}:{port}:127.0.0.1"]
        with running_proxy(tmp_path / "proxy", modes=("http",), extra=extra) as proxy:
            for i in range(3):
                assert fetch(proxy, port, f"/a{i}").status_code == 200
            bundle.write_bytes(system)                              # the echo CA removed
            refused = fetch(proxy, port, "/b")
            assert refused.status_code == 502
            assert refused.headers["x-mirror-error"] == "upstream-certificate"
            shutil.copyfile(echo_ca, bundle)                        # only the echo CA
            assert fetch(proxy, port, "/c").status_code == 200
            bundle.write_bytes(b"not a certificate\n")
            broken = fetch(proxy, port, "/d")
            assert broken.status_code == 502
            assert "no CA certificate could be loaded" in broken.text
