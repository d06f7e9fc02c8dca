"""Experiments reproducing the paper's findings: `python -m experiments.NAME`; results in experiments/results/."""
