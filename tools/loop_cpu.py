"""Instructions the event loop of a real ``mirror run`` spends per new connection, by engine.

    python tools/loop_cpu.py --tls-engine boringssl --connections 30
    python tools/loop_cpu.py --tls-engine replay --connections 30 --tree /path/to/other/checkout

An nginx origin (the bench's, ``tools/bench.py``) and ``mirror run --mode reverse:https://...``
in front of it, run under callgrind with one profile per thread. After some warm-up
connections the counters are zeroed, h2load opens ``--connections`` fresh TLS connections (one
HTTP/1.1 request each, a few per 200 ms: valgrind is slow), and the counters are dumped. The
main thread's instruction count (the event loop: user space only, the kernel's share of
syscalls is not in it) divided by the connections is printed; it does not depend on the
machine's load as CPU time does. ``--tree`` measures another checkout of mirror (a baseline)
with the same origin. ``--keep DIR`` copies the callgrind dumps (one per thread, ``cg.out-NN``;
thread 1 is the event loop) to DIR for ``callgrind_annotate --inclusive=yes``; the working
directory is removed either way.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from bench import HOST, Bench, BenchError, Children, find_tool


def main_thread_instructions(work: Path) -> int:
    """The instruction total of the main thread's callgrind dump (thread 1)."""
    for path in sorted(work.glob("cg.out*")):
        text = path.read_text(errors="replace")
        thread = re.search(r"^thread: (\d+)", text, re.M)
        total = re.search(r"^summary: (\d+)", text, re.M)
        if thread and thread.group(1) == "1" and total:
            return int(total.group(1))
    raise BenchError(f"no dump of the main thread in {work}")


def h2load(port: int, count: int, *, paced: bool = True) -> int:
    """``count`` new connections with one request each (``paced``: a few per 200 ms, as
    valgrind is slow); returns how many succeeded."""
    pace = ["-r", "1", "--rate-period=200ms"] if paced else []
    done = subprocess.run(
        ["h2load", f"--connect-to=127.0.0.1:{port}", f"https://{HOST}/1k", "-n", str(count),
         "-c", str(count), *pace, "--h1"],
        capture_output=True, text=True, timeout=60 + 5 * count, check=False)
    found = re.search(r"(\d+) succeeded", done.stdout)
    return int(found.group(1)) if found else 0


def start_mirror(bench: Bench, work: Path, tree: Path, engine: str, children: Children,
                 command: list[str] | None = None, env: dict[str, str] | None = None,
                 within: float = 600) -> tuple[subprocess.Popen, int]:
    """``mirror run`` of ``tree`` in front of the bench's nginx, started by ``command`` (the
    argv that runs mirror's CLI; default: ``python -m mirror`` under callgrind, one profile
    per thread) with ``env`` added; returns the process and its port once it listens."""
    out, err = work / "mirror.out", work / "mirror.err"
    if command is None:
        command = ["valgrind", "--tool=callgrind", "--separate-threads=yes",
                   f"--callgrind-out-file={work}/cg.out", sys.executable, "-m", "mirror"]
    args = [*command, "run",
            "--mode", f"reverse:https://{HOST}:{bench.nginx_port}", "--listen", "127.0.0.1:0",
            "--upstream-ca", str(work / "origin-ca" / "ca.pem"),
            "--resolve", f"{HOST}:{bench.nginx_port}:127.0.0.1",
            "--store", str(work / "captures.sqlite3"), "--ca-dir", str(work / "mirror-ca"),
            "--tls-engine", engine]
    proc = children.start("mirror", args, stdout=out, stderr=err, cwd=tree,
                          env=dict(os.environ, PYTHONPATH=str(tree), **(env or {})))
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        text = out.read_text(errors="replace")
        found = re.search(r"listening on \S+:(\d+)", text)
        if found and "captures:" in text:
            return proc, int(found.group(1))
        if proc.poll() is not None:
            raise BenchError(f"mirror exited: {err.read_text(errors='replace')[-2000:]}")
        time.sleep(0.2)
    raise BenchError(f"mirror did not start within {within:.0f} s")


def measure(tree: Path, engine: str, connections: int, warmup: int,
            keep: Path | None = None) -> float:
    work = Path(tempfile.mkdtemp(prefix="mirror-loop-cpu-"))
    children = Children()
    args = argparse.Namespace(no_store=False, tls_engine=None, verbose=False)
    bench = Bench(args, work, children)
    try:
        bench.start_nginx(find_tool("nginx") or "/usr/sbin/nginx")
        proc, port = start_mirror(bench, work, tree, engine, children)
        if h2load(port, warmup) != warmup:
            raise BenchError("warm-up connections failed")
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], capture_output=True,
                       check=True)
        if h2load(port, connections) != connections:
            raise BenchError("measured connections failed")
        time.sleep(2)                          # the last closes reach the loop
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True,
                       check=True)
        time.sleep(3)
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for dump in work.glob("cg.out*"):
                shutil.copy2(dump, keep / dump.name)
        return main_thread_instructions(work) / connections
    finally:
        children.stop_all()
        shutil.rmtree(work, ignore_errors=True)


def argument_parser(doc: str | None, connections: int) -> argparse.ArgumentParser:
    """The options this tool and ``loop_gc.py`` share: engine, connections, warm-up, tree."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    parser.add_argument("--tls-engine", default="boringssl", choices=("boringssl", "replay"))
    parser.add_argument("--connections", type=int, default=connections)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="the mirror checkout to run (default: this one)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__, connections=30)
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="copy the callgrind dumps (thread 1 is the event loop) to DIR")
    args = parser.parse_args(argv)
    per = measure(args.tree.resolve(), args.tls_engine, args.connections, args.warmup,
                  args.keep)
    print(f"{args.tree} --tls-engine {args.tls_engine}: {per / 1e6:.3f} M instructions on the "
          f"event loop per new connection ({args.connections} connections)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
