"""HeapTrimmer: the C heap's free pages go back to the kernel while connections are open (and
once after), never while the proxy is idle."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

from mirror.proxy.heap_trim import HeapTrimmer


def run_trimmer(busy_states: list[bool], seconds: float) -> int:
    """How many times a trimmer ticking every 10 ms trims while ``busy()`` answers
    ``busy_states`` one after the other (then False)."""
    states = iter(busy_states)

    async def main():
        trimmer = HeapTrimmer(asyncio.get_running_loop(), lambda: next(states, False),
                              interval=0.01)
        trimmer.start()
        await asyncio.sleep(seconds)
        trimmer.stop()
        return trimmer.trims

    return asyncio.run(main())


def test_trims_while_busy_then_once_more_then_never():
    assert run_trimmer([True, True, False, False, False, False], 0.2) == 3   # 2 busy + 1 after


def test_free_heap_in_the_middle_goes_back():
    """Blocks freed between live ones stay in glibc's heap (it only ever trims the top by
    itself); a trim gives their pages back. In a fresh interpreter's main thread, as in the
    proxy (a test runner's thread could be served by another malloc arena)."""
    script = textwrap.dedent("""
        import ctypes, sys
        sys.path.insert(0, TESTS)
        from test_heap_trim import run_trimmer

        def rss():
            with open("/proc/self/status") as status:
                return next(int(l.split()[1]) for l in status if l.startswith("VmRSS:"))

        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        libc.mallopt(-3, 1 << 20)          # M_MMAP_THRESHOLD: these blocks come from the heap
        blocks, kept = [], []
        for _ in range(1024):              # 64 MiB, resident, a live block after each
            blocks.append(libc.malloc(65536))
            ctypes.memset(blocks[-1], 1, 65536)
            kept.append(libc.malloc(64))
        for block in blocks:
            libc.free(block)
        before = rss()
        trims = run_trimmer([True], 0.05)
        print(before, rss(), trims)
    """)
    script = script.replace("TESTS", repr(str(Path(__file__).parent)))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=True)
    before, after, trims = map(int, done.stdout.split())
    assert trims >= 1
    assert before - after > 48 * 1024, (before, after)               # KiB
