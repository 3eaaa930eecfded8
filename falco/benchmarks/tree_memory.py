"""Wall time and peak resident memory of a whole command, its child processes included.

    python -m falco.benchmarks.tree_memory -- python -m pytest          # the test suite's figures
    python -m falco.benchmarks.tree_memory --every 0.1 -- python app.py

The resident set of the command and every process below it is summed and sampled every ``--every``
seconds (0.25 by default): the peak printed is what the machine had to hold at once, the figure that
decides whether a 16 GB laptop runs the command beside a browser.  A page that several processes map
(a shared library such as libtorch, loaded by every Python process that imports torch) counts once per
process in that sum, so the proportional set size (PSS: each shared page split among the processes
that map it) is printed beside it: the memory the command takes from the machine.  A peak shorter
than one interval can be missed.  The command's exit status is passed on.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time

import psutil


def tree_resident_bytes(root: psutil.Process, proportional: bool = False) -> int:
    """The resident set (RSS) of ``root`` and its descendants, summed; ``proportional``: their PSS."""
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_full_info().pss if proportional else process.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass   # ended between the listing and the reading
    return total


class TreeSampler:
    """Samples a process tree's resident memory in a thread until stopped; ``peak`` in bytes."""

    def __init__(self, pid: int, every: float = 0.25, proportional: bool = False):
        self.root, self.every, self.peak = psutil.Process(pid), every, 0
        self.proportional, self.peak_proportional = proportional, 0   # PSS as well (Linux), when asked
        self.now = self.phase_peak = 0   # the last reading; the peak of the current phase
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="falco-tree-memory", daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.now = tree_resident_bytes(self.root)
            except psutil.NoSuchProcess:
                return
            self.peak, self.phase_peak = max(self.peak, self.now), max(self.phase_peak, self.now)
            if self.proportional:
                try:
                    self.peak_proportional = max(self.peak_proportional, tree_resident_bytes(self.root, True))
                except psutil.NoSuchProcess:
                    return
            self._stop.wait(self.every)

    def phase(self) -> int:
        """The peak since the sampling began or the last ``phase()``; a new phase begins with the current reading."""
        peak = max(self.phase_peak, self.now)
        self.phase_peak = self.now
        return peak

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--every", type=float, default=0.25, help="seconds between samples")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to measure after --")
    started = time.monotonic()
    process = subprocess.Popen(command)
    with TreeSampler(process.pid, args.every, proportional=True) as sampler:
        status = process.wait()
    seconds = time.monotonic() - started
    print(f"tree_memory: {' '.join(command)}\n  exit status {status}, wall {seconds:.1f} s "
          f"({seconds / 60:.2f} min), peak resident memory of the process tree {sampler.peak / 2**30:.2f} GiB "
          f"summed per process (RSS), {sampler.peak_proportional / 2**30:.2f} GiB with shared pages counted "
          f"once (PSS) (sampled every {args.every} s)", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
