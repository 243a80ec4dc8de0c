"""tools/replay_cpu.py runs for real (a few handshakes, two bulk transfers, two connections
through each engine's connection object) and prints one line per handshake setup, one for bulk
throughput and the connection objects' CPU per handshake and per MiB, both engines side by
side."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO


def test_replay_cpu_tool_measures_both_engines():
    result = subprocess.run([sys.executable, str(REPO / "tools" / "replay_cpu.py"), "--count", "3",
                             "--bulk-count", "2", "--bulk-size", "300000",
                             "--adapter-count", "2"],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 8
    for line in lines[:3]:
        match = re.fullmatch(r"chrome \w+ +TLS 1\.[23]: replay (\d+\.\d+) ms, curl_cffi "
                             r"(\d+\.\d+) ms CPU per handshake \(3 each\)", line)
        assert match, line
        assert float(match.group(1)) > 0 and float(match.group(2)) > 0
    match = re.fullmatch(r"chrome bulk 292 KiB up\+down TLS 1\.3 TLS_\w+: replay (\d+) MB/s, "
                         r"curl_cffi (\d+) MB/s per CPU second \(2 each\)", lines[3])
    assert match, lines[3]
    assert int(match.group(1)) > 0 and int(match.group(2)) > 0
    assert lines[4] == ("chrome through the proxy's connection objects (2 each, 292 KiB each "
                        "way, CPU ms):")
    for line, label in zip(lines[5:], ("handshake", "upload per MiB", "download per MiB"),
                           strict=True):
        match = re.fullmatch(rf"  {label} +replay +(\d+\.\d+)  boringssl +(\d+\.\d+)  "
                             r"replay/boringssl (\d+\.\d+)", line)
        assert match, line
        replay, boringssl, ratio = map(float, match.groups())
        assert replay > 0 and boringssl > 0
        assert abs(ratio - replay / boringssl) < 0.01 + 0.03 * ratio
