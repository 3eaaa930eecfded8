"""Speed benchmarks: `python -m falco.benchmarks.<name>` prints timings (no pass/fail)."""


def resident_bytes(field: str = "VmRSS:") -> int:
    """The process's resident memory from /proc/self/status (Linux): ``VmRSS:`` now, ``VmHWM:`` its peak."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field)) * 1024
