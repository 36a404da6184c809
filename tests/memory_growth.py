"""Leak check shared by the core tests: run a call many times and watch Python and process memory.

tracemalloc sees Python-level allocations (NumPy arrays are tracked through its allocator hooks); the
resident set size from /proc/self/statm also sees C-level malloc leaks. Both are measured after a
warm-up so that one-time caches (LAPACK workspaces, interned objects) do not count.
"""

from __future__ import annotations

import gc
import os
import tracemalloc


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def under_asan() -> bool:
    """True when AddressSanitizer is loaded: its quarantine keeps freed memory resident, so RSS says nothing."""
    with open("/proc/self/maps") as f:
        return "libasan" in f.read()


def assert_no_growth(fn, calls: int = 10_000, *, traced_slack: int = 256 * 1024, rss_slack: int = 8 * 1024 * 1024):
    """Call ``fn()`` ``calls`` times; fail if traced or resident memory grows by more than the slack.

    The slacks (256 KiB traced, 8 MiB RSS) are far below what a leak of even a few bytes per call would
    add over 10,000 calls of a C function that allocates arrays (>= 10,000 x 100 bytes = 1 MB traced), and
    above allocator noise (arena reuse, page granularity).
    """
    for _ in range(200):
        fn()
    gc.collect()
    tracemalloc.start()
    try:
        before_traced = tracemalloc.get_traced_memory()[0]
        before_rss = rss_bytes()
        for _ in range(calls):
            fn()
        gc.collect()
        grown_traced = tracemalloc.get_traced_memory()[0] - before_traced
        grown_rss = rss_bytes() - before_rss
    finally:
        tracemalloc.stop()
    assert grown_traced < traced_slack, f"traced memory grew by {grown_traced} bytes over {calls} calls"
    if not under_asan():
        assert grown_rss < rss_slack, f"resident memory grew by {grown_rss} bytes over {calls} calls"
