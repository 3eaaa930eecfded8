"""The process's memory allocator: freed memory kept for the CPU loops' speed, and given back after each loop.

Each CPU step at 1024x1024 allocates and frees about 10 GB of activations and gradients.
glibc serves blocks that large with fresh ``mmap`` pages and unmaps them on ``free``, so
every step the kernel faults in and zeroes them again: 2.6 million page faults, about half
of a step's time on a 2-core machine (see ``python -m falco.benchmarks.optim``).  Inside a
loop that allocates the same blocks every iteration (``reusing``: the optimisation's steps,
a bank's fakes, a clip's frames) freed memory stays in the heap for the next iteration.  When
the last such loop ends, glibc's own policy is back and the free pages go to the system, so a
long-lived process holds what it still uses, not its largest loop's peak; the one-off work
between loops (a run's final 1024 px images) then takes fresh pages and gives them back on
``free`` instead of piling on a heap full of holes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

# mallopt(3) parameters (glibc's malloc.h) and glibc's defaults
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
M_ARENA_MAX = -8
TRIM_THRESHOLD = 2**31 - 1   # largest value mallopt takes: freed memory stays in the heap
DEFAULT_TRIM_THRESHOLD = DEFAULT_MMAP_THRESHOLD = 128 * 1024
DEFAULT_MMAP_MAX = 65536

_lock = threading.Lock()
_libc: ctypes.CDLL | None = None
_enabled = False
_loops = 0   # loops running inside ``reusing``


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
    """Let loops keep freed memory for reuse (``reusing``); process-wide, for CPU work.

    Puts every thread on one heap (arena): a thread's own arena could not hold a large block
    without ``mmap``.  Threads that allocated before the call keep their own arenas, and later
    threads may be given those: call it first thing in the program, before any other thread
    starts (measured: a worker thread gets the full 2.5x on the generator's step only then).
    Idempotent; returns False where it does not apply (not glibc).
    """
    global _enabled
    with _lock:
        if not _enabled:
            libc = _glibc()
            _enabled = libc is not None and libc.mallopt(M_ARENA_MAX, 1) == 1
        return _enabled


@contextmanager
def reusing() -> Iterator[None]:
    """Around a loop whose iterations allocate and free the same large blocks: inside, freed memory stays in the
    heap (no ``mmap`` for large blocks, no trimming); when the last loop inside ``reusing`` ends, in any thread,
    glibc's policy is back and the heap's free pages go to the system.  Does nothing unless
    ``reuse_freed_memory`` was called."""
    global _loops
    with _lock:
        active = _enabled
        if active:
            _loops += 1
            if _loops == 1:
                _set_policy(mmap_max=0, trim_threshold=TRIM_THRESHOLD)
    try:
        yield
    finally:
        if active:
            with _lock:
                _loops -= 1
                if _loops == 0:
                    # glibc's starting values, the mmap threshold too: glibc raises it as large blocks are freed
                    # (up to 32 MiB), and blocks under it would stay in the heap's holes
                    _set_policy(mmap_max=DEFAULT_MMAP_MAX, trim_threshold=DEFAULT_TRIM_THRESHOLD,
                                mmap_threshold=DEFAULT_MMAP_THRESHOLD)
                    release_freed_memory()


def reusing_now() -> bool:
    """Whether freed memory stays in the heap at present (a loop inside ``reusing`` runs)."""
    return _loops > 0


def _set_policy(mmap_max: int, trim_threshold: int, mmap_threshold: int | None = None) -> None:
    libc = _glibc()
    settings = ((M_MMAP_MAX, mmap_max), (M_TRIM_THRESHOLD, trim_threshold), (M_MMAP_THRESHOLD, mmap_threshold))
    for param, value in settings:
        if value is not None:
            libc.mallopt(param, value)


def release_freed_memory() -> bool:
    """Hand the heap's free pages back to the system (glibc's malloc_trim); live memory stays where it is.

    ``reusing`` calls it when its last loop ends; the next loop faults its pages in again, which costs one
    step's page faults, not every step's.  Returns False where it does not apply (not glibc)."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


MADV_PAGEOUT = 21   # madvise(2), Linux 5.4+: reclaim these pages now


def page_out_mapped(tensors: Iterable[torch.Tensor]) -> int:
    """Hand back the resident pages of CPU tensors that are mapped from files (weights loaded from safetensors):
    they stay in the kernel's page cache and come back with the next read, a minor fault a page (about 0.2 s for
    e4e's 1 GB).  Pages of other memory are left alone (paging them out would mean swap).  Returns the bytes
    handed back (0 where the kernel does not take the hint)."""
    libc = _glibc()
    if libc is None:
        return 0
    files = _file_mappings()
    page, done = mmap.PAGESIZE, 0
    for tensor in tensors:
        if tensor.device.type != "cpu" or tensor.numel() == 0:
            continue
        start = tensor.untyped_storage().data_ptr()
        end = start + tensor.untyped_storage().nbytes()
        start, end = -(-start // page) * page, end // page * page   # whole pages inside the tensor only
        if end > start and any(low <= start and end <= high for low, high in files):
            if libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_PAGEOUT) == 0:
                done += end - start
    return done


def _file_mappings() -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of regular files (/proc/self/maps, Linux)."""
    ranges = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].startswith("/"):
                    low, high = fields[0].split("-")
                    ranges.append((int(low, 16), int(high, 16)))
    except OSError:
        pass
    return ranges
