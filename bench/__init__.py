"""Benchmarks (run as modules, e.g. ``python -m bench.bench_transfer``); not part of the package."""
