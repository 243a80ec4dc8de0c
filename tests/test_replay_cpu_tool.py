"""tools/replay_cpu.py runs for real (a few handshakes) and prints one line per server setup."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO


def test_replay_cpu_tool_measures_both_engines():
    result = subprocess.run([sys.executable, str(REPO / "tools" / "replay_cpu.py"), "--count", "3"],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    for line in lines:
        match = re.fullmatch(r"chrome \w+ +TLS 1\.[23]: replay (\d+\.\d+) ms, curl_cffi "
                             r"(\d+\.\d+) ms CPU per handshake \(3 each\)", line)
        assert match, line
        assert float(match.group(1)) > 0 and float(match.group(2)) > 0
