"""The test suite (a package: torch-fidelity installs a top-level ``tests`` package that would shadow this folder)."""
