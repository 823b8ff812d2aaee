"""Benchmarks: run all with `python -m bench` (make bench)."""
