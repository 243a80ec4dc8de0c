"""The wheel is the product: built from the project files, installed (not editable) into a fresh
venv, run from a directory that is not the repository, `mirror identify --pcap` names a
reference client from the references shipped inside the wheel, and `--references` still wins.

The wheel is ``$MIRROR_WHEEL`` when set (.ci/run builds it once), else built here from a copy
of the project's files. The venv gets the wheel with ``--no-deps``; the dependencies come from
this interpreter's site-packages through a ``.pth`` path file (its own site-packages, holding
the wheel's ``mirror``, comes first)."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO
from scapy.all import IP, TCP, Ether, wrpcap

HELLO_OF = "firefox"


def _build_wheel(out: Path) -> Path:
    source = out / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for name in ("mirror", "fingerprints"):
        shutil.copytree(REPO / name, source / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                           "--disable-pip-version-check", "-w", str(out / "dist"), str(source)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    (wheel,) = (out / "dist").glob("mirror-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed; returns its bin/ directory."""
    work = tmp_path_factory.mktemp("wheel")
    wheel = Path(os.environ["MIRROR_WHEEL"]) if os.environ.get("MIRROR_WHEEL") \
        else _build_wheel(work)
    names = zipfile.ZipFile(wheel).namelist()
    assert "mirror/references_data/firefox.json" in names, names
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    bin_dir = venv / "bin"
    (inner,) = {Path(p) for p in subprocess.run(
        [bin_dir / "python", "-c", "import site; print(site.getsitepackages()[0])"],
        capture_output=True, text=True, check=True).stdout.split()}
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(bin_dir / "python"),
                           "install", "-q", "--no-deps", "--no-index",
                           "--disable-pip-version-check", str(wheel)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert (inner / "mirror" / "references_data" / "firefox.json").is_file()
    # then the dependencies (after the install: pip must not find this interpreter's mirror)
    outer = [p for p in [*site.getsitepackages(), *sys.path]
             if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]
    (inner / "outer-dependencies.pth").write_text("\n".join(dict.fromkeys(outer)) + "\n")
    return bin_dir


def _pcap_with_a_hello(path: Path, hello: bytes) -> None:
    """A TCP connection 198.18.0.1 -> 198.18.0.2:443 whose first flight is ``hello``."""
    client, server = ("198.18.0.1", 40001), ("198.18.0.2", 443)
    c_isn, s_isn = 1000, 5000

    def pkt(src, dst, flags, seq, ack, payload=b""):
        return (Ether() / IP(src=src[0], dst=dst[0], ttl=64, flags="DF")
                / TCP(sport=src[1], dport=dst[1], flags=flags, seq=seq, ack=ack, window=64240,
                      options=[("MSS", 1460)] if "S" in flags else []) / payload)

    record = b"\x16\x03\x01" + len(hello).to_bytes(2, "big") + hello
    wrpcap(str(path), [pkt(client, server, "S", c_isn, 0),
                       pkt(server, client, "SA", s_isn, c_isn + 1),
                       pkt(client, server, "A", c_isn + 1, s_isn + 1),
                       pkt(client, server, "PA", c_isn + 1, s_isn + 1, record)])


def _mirror(bin_dir: Path, *args, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run([str(bin_dir / "mirror"), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_installed_wheel_names_a_reference_from_its_own_data(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([installed / "python", "-c", "import mirror.identify.references as r; "
                            "print(r.__file__); print(r.default_directory())"], cwd=elsewhere,
                           capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(p).is_relative_to(installed.parent) for p in where), where
    assert not any(Path(p).is_relative_to(REPO) for p in where), where

    reference = json.loads((REPO / "fingerprints" / f"{HELLO_OF}.json").read_text())
    pcap = elsewhere / "one.pcap"
    _pcap_with_a_hello(pcap, bytes.fromhex(reference["tls"]["raw_client_hello"]))
    done = _mirror(installed, "identify", "--pcap", pcap, "--json", cwd=elsewhere)
    assert "Traceback" not in done.stderr and done.returncode in (0, 1), done.stderr
    (seen,) = [c for c in json.loads(done.stdout) if c["nearest"]]
    assert seen["exact"] == HELLO_OF and seen["nearest"][0]["reference"] == HELLO_OF
    # the TLS layer alone was seen: exact on what was seen, exit 1 (incomplete)
    assert done.returncode == 1 and seen["unobserved"] == ["http"]

    # --references still overrides the shipped set
    only_chrome = elsewhere / "refs"
    only_chrome.mkdir()
    shutil.copy2(REPO / "fingerprints" / "chrome.json", only_chrome)
    done = _mirror(installed, "identify", "--pcap", pcap, "--json", "--references", only_chrome,
                   cwd=elsewhere)
    (seen,) = [c for c in json.loads(done.stdout) if c["nearest"]]
    assert [n["reference"] for n in seen["nearest"]] == ["chrome"] and seen["exact"] is None
    empty = elsewhere / "empty"
    empty.mkdir()
    done = _mirror(installed, "identify", "--pcap", pcap, "--references", empty, cwd=elsewhere)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
