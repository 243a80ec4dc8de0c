"""JA3 / JA3N / JA4 rules: JA3 against tshark's own JA3, JA4 edge cases field by field.

Byte-exactness of JA4, JA4_r, JA4_o and JA4_ro against FoxIO's references is checked over the
vector captures in test_golden_vectors.py; here are the rules those captures do not reach.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess

import pytest
from conftest import alpn_ext, make_hello

from mirror.fingerprint.tls import ja3, ja3_string, ja3n_string, ja4, ja4_o, ja4_r, ja4_ro
from mirror.wire.tls import parse_client_hello, read_client_hello


def hello(*args, **kwargs):
    return parse_client_hello(make_hello(*args, **kwargs))


def test_ja3_matches_tshark_on_real_hellos(real_hellos, tmp_path):
    if not shutil.which("tshark"):
        pytest.fail("tshark is not installed; .ci/run installs it")
    from scapy.all import IP, TCP, wrpcap

    names = sorted(real_hellos)
    packets = [
        IP(src="198.18.0.1", dst="198.18.0.2") / TCP(sport=40000 + i, dport=443, flags="PA", seq=1)
        / real_hellos[name]
        for i, name in enumerate(names)
    ]
    pcap = tmp_path / "hellos.pcap"
    wrpcap(str(pcap), packets)
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-o", "tcp.analyze_sequence_numbers:FALSE",
         "-Y", "tls.handshake.type == 1", "-T", "fields",
         "-e", "tcp.srcport", "-e", "tls.handshake.ja3_full", "-e", "tls.handshake.ja3"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    seen = {}
    for line in out.splitlines():
        port, full, digest = line.split("\t")
        seen[names[int(port) - 40000]] = (full, digest)
    assert sorted(seen) == names
    for name in names:
        parsed = read_client_hello(real_hellos[name])
        assert (ja3_string(parsed), ja3(parsed)) == seen[name], name


def test_ja3n_sorts_extensions_only(real_hellos):
    parsed = read_client_hello(real_hellos["chrome"])
    version, ciphers, extensions, groups, formats = ja3_string(parsed).split(",")
    n_version, n_ciphers, n_extensions, n_groups, n_formats = ja3n_string(parsed).split(",")
    assert (version, ciphers, groups, formats) == (n_version, n_ciphers, n_groups, n_formats)
    assert n_extensions.split("-") == sorted(extensions.split("-"), key=int)
    assert "2570" not in ja3_string(parsed).split(",")[1].split("-")  # GREASE dropped


@pytest.mark.parametrize(
    "protocols, code",
    [
        ((b"h2", b"http/1.1"), "h2"),
        ((b"http/1.1",), "h1"),
        ((b"h",), "hh"),
        ((b"h3-29",), "h9"),
        ((b"\xab\xcd",), "ad"),  # non-alphanumeric: first and last hex digit
        ((b"a\xff",), "6f"),
        ((b"\x30\x39",), "09"),
    ],
)
def test_ja4_alpn_rules(protocols, code):
    parsed = hello(extensions=[alpn_ext(*protocols)])
    assert ja4(parsed)[8:10] == code


def test_ja4_without_alpn_sni_or_versions():
    parsed = hello(ciphers=(0x002F,), extensions=[(23, b"")], legacy_version=0x0301)
    assert ja4(parsed).startswith("t10i0101" + "00_")


def test_ja4_version_is_highest_supported_version_without_grease():
    versions = b"\x06" + struct.pack("!HHH", 0x3A3A, 0x0304, 0x0303)
    parsed = hello(extensions=[(43, versions)])
    assert ja4(parsed)[1:3] == "13"
    parsed = hello(extensions=[(43, b"\x02\x7f\x17")])  # a draft version nobody maps
    assert ja4(parsed)[1:3] == "00"


def test_ja4_counts_skip_grease_and_cap_at_99():
    ciphers = [0x0A0A] + list(range(1, 121))
    extensions = [(0x1A1A, b"")] + [(0x7000 + i, b"") for i in range(120)]
    parsed = hello(ciphers=ciphers, extensions=extensions)
    assert ja4(parsed)[4:8] == "9999"
    assert "0a0a" not in ja4_r(parsed)


def test_ja4_sorting_and_sigalg_order():
    sigalgs = struct.pack("!HHHH", 6, 0x0804, 0x0403, 0x0201)
    parsed = hello(
        ciphers=(0x1302, 0x1301),
        extensions=[(0, b"\x00\x05\x00\x00\x02ab"), (13, sigalgs), alpn_ext(b"h2"), (10, b"\x00\x02\x00\x1d")],
    )
    assert ja4_r(parsed) == "t12d0204h2_1301,1302_000a,000d_0804,0403,0201"
    assert ja4_ro(parsed) == "t12d0204h2_1302,1301_0000,000d,0010,000a_0804,0403,0201"
    assert ja4(parsed).split("_")[1] == hashlib.sha256(b"1301,1302").hexdigest()[:12]
    assert ja4_o(parsed).split("_")[1] == hashlib.sha256(b"1302,1301").hexdigest()[:12]


def test_ja4_c_without_signature_algorithms_has_no_trailing_underscore():
    parsed = hello(extensions=[(23, b""), (65281, b"\x00")])
    assert ja4_r(parsed).endswith("_0017,ff01")
    assert ja4(parsed).endswith("_" + hashlib.sha256(b"0017,ff01").hexdigest()[:12])


def test_ja4_empty_lists_hash_to_zeros():
    parsed = hello(extensions=[(0, b"\x00\x05\x00\x00\x02ab")])
    assert ja4(parsed).endswith("_000000000000")


def test_ja4_transport_letter():
    parsed = hello()
    assert ja4(parsed, "q").startswith("q")
    assert ja4(parsed).startswith("t")


def test_tls_fingerprints_agree_with_each_function(real_hellos):
    from mirror.fingerprint import tls as fp
    from mirror.wire.tls import read_client_hello

    for raw in real_hellos.values():
        hello = read_client_hello(raw)
        for transport in ("t", "q"):
            assert fp.tls_fingerprints(hello, transport) == {
                "ja3": fp.ja3(hello), "ja3_full": fp.ja3_string(hello), "ja3n": fp.ja3n(hello),
                "ja4": fp.ja4(hello, transport), "ja4_r": fp.ja4_r(hello, transport),
                "ja4_o": fp.ja4_o(hello, transport), "ja4_ro": fp.ja4_ro(hello, transport)}
