"""tools/bench.py, end to end in its quick form (nginx + mirror + h2load for real), and its refusal
to count an h2load run that had failures."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

BENCH = REPO / "tools" / "bench.py"


def have(tool: str) -> bool:
    return bool(shutil.which(tool) or any(Path(d, tool).exists() for d in ("/usr/sbin", "/sbin")))


def need_tools() -> None:
    for tool, package in (("nginx", "nginx"), ("h2load", "nghttp2-client")):
        if not have(tool):
            pytest.fail(f"{tool} is not installed (apt-get install {package}); .ci/run installs it")


def load_bench():
    spec = importlib.util.spec_from_file_location("mirror_bench_tool", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module            # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def medians(row: str, label: str) -> list[float]:
    """The median of each path's cell ("12,345 (12,000–12,500)") in a table row."""
    return [float(m.replace(",", "")) for m in re.findall(r"([\d,]+(?:\.\d+)?) \(", row[len(label):])]


def test_quick_h1_direct_and_mirror(tmp_path):
    need_tools()
    raw_file = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--only", "h1-1k",
                           "--paths", "direct,mirror", "--json", str(raw_file)],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("machine: ") for line in lines), done.stdout
    header = next(line for line in lines if line.startswith("scenario"))
    assert header.split() == ["scenario", "direct", "mirror", "mirror/direct"]
    for label in ("h1-1k req/s", "h1-1k mean (ms)", "h1-1k p99 (ms)"):
        row = next(line for line in lines if line.startswith(label))
        values = medians(row, label)
        assert len(values) == 2 and all(v > 0 for v in values), row
        ratio = float(row.split()[-1])
        assert ratio == pytest.approx(values[1] / values[0], rel=0.05), row
    # the proxy's CPU per request, all its processes and its event loop alone; none for direct
    for label in ("h1-1k proxy CPU/req (µs)", "h1-1k event loop CPU/req (µs)"):
        row = next(line for line in lines if line.startswith(label))
        assert row[len(label):].split()[0] == "-", row
        values = medians(row, label)
        assert len(values) == 1 and values[0] > 0, row
    # a proxy in the way costs something: more latency than straight to nginx
    mean_row = next(line for line in lines if line.startswith("h1-1k mean (ms)"))
    direct_mean, mirror_mean = medians(mean_row, "h1-1k mean (ms)")
    assert mirror_mean > direct_mean

    raw = json.loads(raw_file.read_text())
    for path in ("direct", "mirror"):
        runs = raw["results"]["h1-1k"][path]["runs"]
        assert len(runs) == 2
        for run in runs:
            assert run["ok"] and run["problems"] == []
            assert run["succeeded"] == run["n"] and run["failed"] == run["errored"] == 0
            assert run["alpn"] == "http/1.1"
            assert run["log_requests"] == run["n"]          # one --log-file line per request
            assert run["min_ms"] <= run["p99_ms"] <= run["max_ms"]
            cpu = run["cpu_us_per_request"]         # every process on the path used some CPU
            assert set(cpu) == ({"nginx", "h2load"} | ({"proxy"} if path == "mirror" else set()))
            assert all(value > 0 for value in cpu.values()), cpu
            assert 0 < run["busy_cores"] <= len(os.sched_getaffinity(0)) + 0.5
            if path == "mirror":                    # its event loop: part of its CPU
                assert 0 < run["loop_us_per_request"] <= cpu["proxy"]
    # everything it started is gone: the temporary directory and the listening ports
    assert not Path(raw["work_dir"]).exists()
    for port in raw["ports"].values():
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still listening"


def test_workers_table_gives_a_ceiling_for_each_scenario():
    """The --workers 2 ceiling (usable cores over the CPU one request or connection costs in
    the proxy, nginx and h2load together) is printed for every workers: scenario."""
    bench = load_bench()
    cores = len(os.sched_getaffinity(0))

    def cell(unit: str, rate: float, proxy: float, loop: float,
             *workers: list[float]) -> object:
        key = "req_per_s" if unit == "request" else "conn_per_s"
        run = {"ok": True, "metrics": {key: rate, "mean_ms": 1.0, "p99_ms": 2.0},
               f"cpu_us_per_{unit}": {"proxy": proxy, "nginx": 20.0, "h2load": 10.0},
               f"loop_us_per_{unit}": loop, "busy_cores": 1.0, "seconds": 3.0}
        runs = [dict(run) for _ in range(2)]
        for made, seconds in zip(runs, workers, strict=False):
            made["worker_cpu_seconds"] = seconds
        return bench.Cell(runs=runs)

    results = {
        "workers:h1-1k": {"mirror": cell("request", 9000, 70.0, 60.0),
                          "mirror-w2": cell("request", 12000, 70.0, 55.0, [1.0, 1.1], [2.0, 2.0])},
        "workers:h2-1k": {"mirror": cell("request", 12000, 50.0, 45.0),
                          "mirror-w2": cell("request", 15000, 60.0, 40.0, [0.5, 1.5], [1.0, 0.0])},
        "workers:newconn-h1": {"mirror": cell("connection", 600, 900.0, 800.0),
                               "mirror-w2": cell("connection", 900, 970.0, 700.0)},
    }
    table = bench.workers_table(results, {})
    rows = {line.split("  ")[0]: line.split() for line in table.splitlines()}
    for name, rate, unit, total, one in (("h1-1k", "req/s", "request", 100.0, 9000),
                                        ("h2-1k", "req/s", "request", 90.0, 12000),
                                        ("newconn-h1", "conn/s", "connection", 1000.0, 600)):
        row = rows[f"{name} ceiling {rate} (cores / CPU per {unit})"]
        ceiling = float(row[-2].replace(",", ""))
        assert ceiling == pytest.approx(cores / (total / 1e6), abs=1)
        assert float(row[-1]) == pytest.approx(ceiling / one, abs=0.01)
    short = {"request": "req", "connection": "conn"}
    loops = rows["h2-1k CPU/req (µs): proxy event loops"]
    assert loops[-3:] == ["45.0", "40.0", "0.89"]
    assert rows[f"newconn-h1 CPU/{short['connection']} (µs): proxy"][-3:] == ["900.0", "970.0",
                                                                              "1.08"]
    # how the proxy's CPU fell on the two workers, per run, busiest first
    assert rows["h1-1k worker CPU share (%, each run)"][-2:] == ["52/48", "50/50"]
    assert rows["h2-1k worker CPU share (%, each run)"][-2:] == ["75/25", "100/0"]
    assert "newconn-h1 worker CPU share (%, each run)" not in rows   # not measured: no row


def test_a_run_with_failures_is_not_a_result(tmp_path):
    """h2load against a port where nothing listens: every request fails; the tool's checks must
    say so rather than return a number."""
    if not have("h2load"):
        pytest.fail("h2load is not installed (apt-get install nghttp2-client); .ci/run installs it")
    bench = load_bench()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]          # bound, never listening: connections are refused
        done = subprocess.run([shutil.which("h2load"), f"--connect-to=127.0.0.1:{port}",
                               "https://bench.test/1k", "--h1", "-n", "20", "-c", "2"],
                              capture_output=True, text=True, timeout=60, check=False)
    result = bench.parse_h2load(done.stdout + done.stderr)
    problems = bench.h2load_problems(result, 20, "h1", done.returncode)
    assert problems, result
    assert result.get("succeeded", 0) == 0
    assert any("failed" in p or "succeeded" in p or "summary" in p for p in problems)


def test_engines_table_puts_the_engines_side_by_side():
    """--tls-engines: each engines: scenario's rate and the proxy's CPU per connection (newconn)
    or per MiB (a 1 MiB response is one request), one column per engine, first over second."""
    bench = load_bench()
    args = bench.parse_args(["--only", "engines", "--tls-engines", "replay,boringssl"])
    assert args.only == {"engines:newconn-h1", "engines:newconn-h2", "engines:h1-1m",
                         "engines:h2-1m"}
    assert bench.engine_of("mirror[replay]") == "replay" and bench.engine_of("mirror") is None

    def cell(key: str, rate: float, unit: str, proxy: float, loop: float) -> object:
        run = {"ok": True, "metrics": {key: rate}, f"cpu_us_per_{unit}": {"proxy": proxy},
               f"loop_us_per_{unit}": loop, "seconds": 3.0}
        return bench.Cell(runs=[run, dict(run)])

    results = {
        "engines:newconn-h1": {"mirror[replay]": cell("conn_per_s", 300, "connection", 900, 800),
                               "mirror[boringssl]": cell("conn_per_s", 250, "connection", 1000,
                                                         850)},
        "engines:h2-1m": {"mirror[replay]": cell("mib_per_s", 180, "request", 2300, 2200),
                          "mirror[boringssl]": cell("mib_per_s", 200, "request", 2000, 1900)},
    }
    table = bench.engines_table(results, ["replay", "boringssl"])
    lines = table.splitlines()
    assert lines[0].split() == ["mirror", "--tls-engine", "replay", "boringssl",
                                "replay/boringssl"]
    rows = {line.split("  ")[0]: line.split() for line in lines[2:]}
    assert rows["newconn-h1 conn/s"][-1] == "1.20"
    assert rows["newconn-h1 proxy CPU/conn (µs)"][-1] == "0.90"
    assert rows["newconn-h1 event loop CPU/conn (µs)"][-1] == "0.94"
    assert rows["h2-1m MiB/s"][-1] == "0.90"
    assert rows["h2-1m proxy CPU/MiB (µs)"][-1] == "1.15"
    assert not any(name.startswith(("newconn-h2", "h1-1m")) for name in rows)
    with pytest.raises(SystemExit):                 # engines: scenarios need the engines
        bench.parse_args(["--only", "engines"])
