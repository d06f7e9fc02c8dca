"""Benchmarks: `python -m benchmarks.NAME`; each prints a table and writes JSON to benchmarks/results/."""
