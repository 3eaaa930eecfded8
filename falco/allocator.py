"""The process's memory allocator: kept freed memory for the CPU loop's speed, given back after a job.

Each CPU step at 1024x1024 allocates and frees about 10 GB of activations and gradients.
glibc serves blocks that large with fresh ``mmap`` pages and unmaps them on ``free``, so
every step the kernel faults in and zeroes them again: 2.6 million page faults, about half
of a step's time on a 2-core machine (see ``python -m falco.benchmarks.optim``).  Keeping
freed memory in the heap lets the next step reuse it (``reuse_freed_memory``); a long-lived
process then hands the freed pages back to the system once a job is over
(``release_freed_memory``), so that its resident memory is what it still uses, not its peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

# mallopt(3) parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
TRIM_THRESHOLD = 2**31 - 1   # largest value mallopt takes: freed memory stays in the heap

_lock = threading.Lock()
_libc: ctypes.CDLL | None = None
_reusing = False


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name or "libc.so.6")
        except OSError:
            return None
        if not hasattr(libc, "gnu_get_libc_version"):   # glibc only: musl and others differ in mallopt
            return None
        _libc = libc
    return _libc


def reuse_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the OS; process-wide.

    Large blocks come from the heap instead of ``mmap``, one heap serves every thread,
    and the heap is never trimmed.  The process then keeps its peak heap size (an optimisation
    run's working set) instead of paying page faults on every step.  Threads that allocated
    before the call keep their own heaps (arenas), and later threads may be given those: call
    it first thing in the program, before any other thread starts (measured: a worker thread
    gets the full 2.5x on the generator's step only then).  Idempotent; returns False where it
    does not apply (not glibc).
    """
    global _reusing
    with _lock:
        if _reusing:
            return True
        libc = _glibc()
        if libc is None:
            return False
        _reusing = all(libc.mallopt(param, value) == 1 for param, value in
                       ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)))
        return _reusing


def release_freed_memory() -> bool:
    """Hand the heap's free pages back to the system (glibc's malloc_trim); live memory stays where it is.

    Call it when a job is over: with ``reuse_freed_memory`` the heap never shrinks by itself, so a process would
    otherwise hold its largest job's peak for the rest of its life.  The next job faults its pages in again, which
    costs one step's page faults, not every step's.  Returns False where it does not apply (not glibc)."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
