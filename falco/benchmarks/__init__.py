"""Speed benchmarks: `python -m falco.benchmarks.<name>` prints timings (no pass/fail)."""
