"""Objects per new connection that only the cyclic garbage collector frees, in a real
``mirror run``.

    python tools/loop_gc.py --tls-engine boringssl --connections 50
    python tools/loop_gc.py --tls-engine replay --tree /path/to/other/checkout

The origin and the proxy are ``loop_cpu.py``'s (nginx, ``mirror run --mode reverse:https://...``),
the proxy started with the collector in ``DEBUG_SAVEALL`` mode: what a collection finds
unreachable is kept in ``gc.garbage`` instead of being freed. After warm-up connections,
SIGUSR2 makes the proxy collect, write what it found and free it; h2load then opens
``--connections`` fresh TLS connections (one HTTP/1.1 request each), and after a second
SIGUSR2 the objects found, by type, are printed per connection. A connection whose parts hold
each other in reference cycles leaves them all for the collector (and its pauses on the event
loop); one whose parts are let go when it closes leaves nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from bench import Bench, BenchError, Children, find_tool
from loop_cpu import argument_parser, h2load, start_mirror

# run in the proxy's interpreter: mirror's CLI, with the collector keeping what it finds
WRAPPER = """
import collections, gc, json, os, runpy, signal, sys
out = os.environ["MIRROR_LOOP_GC_OUT"]
gc.set_debug(gc.DEBUG_SAVEALL)
def dump(*_):
    gc.collect()
    kinds = collections.Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage)
    with open(out, "a") as f:
        f.write(json.dumps({"found": len(gc.garbage), "kinds": kinds.most_common(40)}) + "\\n")
    gc.garbage.clear()
    gc.set_debug(0); gc.collect(); gc.set_debug(gc.DEBUG_SAVEALL)   # freed now, not found again
signal.signal(signal.SIGUSR2, dump)
sys.argv = ["mirror"] + sys.argv[1:]
runpy.run_module("mirror", run_name="__main__", alter_sys=True)
"""


def measure(tree: Path, engine: str, connections: int, warmup: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="mirror-loop-gc-"))
    children = Children()
    bench = Bench(argparse.Namespace(no_store=False, tls_engine=None, verbose=False), work,
                  children)
    out = work / "gc.jsonl"
    try:
        bench.start_nginx(find_tool("nginx") or "/usr/sbin/nginx")
        proc, port = start_mirror(bench, work, tree, engine, children,
                                  command=[sys.executable, "-c", WRAPPER],
                                  env={"MIRROR_LOOP_GC_OUT": str(out)}, within=60)
        if h2load(port, warmup, paced=False) != warmup:
            raise BenchError("warm-up connections failed")
        time.sleep(3)                              # their closes reach the loop
        os.kill(proc.pid, signal.SIGUSR2)
        time.sleep(1)
        if h2load(port, connections, paced=False) != connections:
            raise BenchError("measured connections failed")
        time.sleep(3)
        os.kill(proc.pid, signal.SIGUSR2)
        time.sleep(1)
        return json.loads(out.read_text().splitlines()[-1])
    finally:
        children.stop_all()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__, connections=50)
    args = parser.parse_args(argv)
    found = measure(args.tree.resolve(), args.tls_engine, args.connections, args.warmup)
    per = args.connections
    print(f"{args.tree} --tls-engine {args.tls_engine}: {found['found'] / per:.1f} objects per "
          f"new connection freed only by the cyclic GC ({per} connections)")
    for kind, count in found["kinds"]:
        print(f"  {count / per:6.2f} {kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
