"""`mirror run` says at start, in one line, which SYN fields will be exact and, when some will
not, what to do about it."""

from __future__ import annotations

import os

import pytest
from proxyrun import running_proxy

from mirror.net.tcp_mirror import TcpMirror


def tcp_line(lines: list[str]) -> str:
    (line,) = [line.strip() for line in lines if line.startswith("TCP:")]
    return line


def test_no_syn_rewrite_says_which_fields_are_the_kernels_and_how_to_fix_it(tmp_path):
    with running_proxy(tmp_path, modes=("http",), extra=["--no-syn-rewrite"]) as proxy:
        line = tcp_line(proxy.lines)
    assert line.startswith("TCP: client SYNs mirrored by socket options only; exact: TTL, DF, MSS")
    assert "the kernel's own: window, option layout, IP ID" in line
    assert line.endswith("to make them exact: remove --no-syn-rewrite"), line


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="SYN rewriting needs root")
def test_as_root_every_field_is_exact(tmp_path):
    with running_proxy(tmp_path, modes=("http",)) as proxy:
        line = tcp_line(proxy.lines)
    assert line == ("TCP: client SYNs mirrored (socket options and SYN rewriting); exact: TTL, "
                    "DF, MSS, window scale, window, option layout, IP ID, DSCP, flow label")


def test_without_root_the_line_says_run_as_root():
    tcp = TcpMirror()
    tcp.root = False                   # what os.geteuid() != 0 gives
    tcp.start()
    line = tcp.summary()
    assert not tcp.rewriting
    assert f"window scale up to {tcp.natural_wscale} (more needs root)" in line
    assert line.endswith("(SYN rewriting needs root (NFQUEUE and iptables)); "
                         "to make them exact: run as root"), line


def test_a_sigterm_right_after_the_start_lines_stops_it_cleanly(tmp_path):
    """The signal handlers are in place before the first start-up line is printed: a service
    manager (or a test) stopping it at once gets exit 0 and its SYN chain removed."""
    import signal
    import subprocess
    import sys

    for attempt in range(6):
        work = tmp_path / str(attempt)
        proc = subprocess.Popen([sys.executable, "-m", "mirror", "run", "--mode", "http",
                                 "--listen", "127.0.0.1:0", "--ca-dir", str(work / "ca"),
                                 "--store", str(work / "c.sqlite3")], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            lines = []
            for line in proc.stdout:
                lines.append(line)
                if line.startswith("captures:"):
                    break
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0, (lines, proc.stderr.read())
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        chain = f"MIRROR_SYN_{0x7000 + proc.pid % 0x1000}"
        if os.geteuid() == 0:
            rules = subprocess.run(["iptables", "-w", "5", "-t", "mangle", "-S"],
                                   capture_output=True, text=True, check=True).stdout
            assert f"-N {chain}\n" not in rules
