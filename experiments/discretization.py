"""Discretization study (design.md §7, §9; the paper's Figure 3): sample the trained W1-only and W1⊕W2
MNIST flows from the same x0 with Euler at h ∈ {1, 1/2, 1/4, 1/8, 1/64}, Heun, Tsit5 and adaptive Dopri5.

    python -m experiments.discretization [--full] [--n 1000]

Needs the runs of `experiments.mnist_cases` (same --full flag). Reports, per solver: NFE, the
discretization deviation mean|x_T^(h) − x_T^(ref)| / mean distance between independent samples against
Euler h = 1/64, and the image-quality metrics of `w12_jax.image_metrics`. Must show: W1⊕W2 deviates less than
W1-only at h = 1.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from experiments.common import DIGIT_HEADER, RESULTS, RUNS, command_line, digit_cells, digit_floor_text, \
    digit_rows_figure, machine, markdown_table, write_results
from w12_jax import image_metrics
from w12_jax.checkpoint import Checkpointer
from w12_jax.classifier import load_or_train_classifier
from w12_jax.data import load_config_dataset
from w12_jax.evaluation import measure_samplers, sampler_samples
from w12_jax.presets import CASE_NAMES
from w12_jax.sample import generate

CASES = ("w1w2", "w1")


def solvers(T: float):
    """(label, sample kwargs): Euler at h ∈ {1, 1/2, 1/4, 1/8, 1/64} (the paper's units, T = 5 steps of 1)."""
    out = [(f"euler h=1/{m}" if m > 1 else "euler h=1", {"solver": "euler", "num_steps": int(round(T * m))})
           for m in (1, 2, 4, 8, 64)]
    out += [("heun h=1", {"solver": "heun", "num_steps": int(round(T))}),
            ("tsit5 h=1", {"solver": "tsit5", "num_steps": int(round(T))}),
            ("dopri5 adaptive 1e-4", {"solver": "dopri5", "rtol": 1e-4, "atol": 1e-4})]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--out", default=os.path.join(RESULTS, "discretization"))
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    runs = os.path.join(RUNS, "mnist_cases" + ("-full" if args.full else ""))
    classifier, accuracy = load_or_train_classifier()
    rows, results = [], {}
    grids = {}
    for case in CASES:
        with Checkpointer(os.path.join(runs, case, "checkpoints"), read_only=True) as ckpt:
            state, config = ckpt.restore()
        ds = load_config_dataset(config)
        x0, _ = generate(config, state.potential_ema, args.n, num_steps=1)  # the same x0 for every solver

        def quality(x_T):
            return image_metrics.image_quality(np.clip(x_T, 0, 1), classifier, accuracy, ds.heldout, ds.train)

        reference = next(s for s in solvers(config.T) if s[0] == "euler h=1/64")
        measured = measure_samplers(config, state.potential_ema, x0, solvers(config.T), reference, quality)
        for label, r in measured["samplers"].items():
            results.setdefault(case, {})[label] = r
            rows.append([CASE_NAMES[case], label, r["nfe"], r["deviation"], *digit_cells(r), r["confidence"]])
        grids[case] = dict(zip([label for label, _ in solvers(config.T)],
                               sampler_samples(config, state.potential_ema, x0[:8], solvers(config.T))))

    labels = [label for label, _ in solvers(5.0)]
    digit_rows_figure({CASE_NAMES[c]: [grids[c][label] for label in labels] for c in CASES}, labels,
                      os.path.join(args.out, "figure3.png"))
    dev_h1 = {c: results[c]["euler h=1"]["deviation"] for c in CASES}
    check = dev_h1["w1w2"] < dev_h1["w1"]
    header = ["case", "solver", "NFE", "deviation vs Euler 1/64", *DIGIT_HEADER, "confidence"]
    results["floor"], floor_text = digit_floor_text(config, ds, args.n)
    text = (f"# Discretization: W1⊕W2 vs W1-only MNIST flows\n\n"
            f"Command: `{command_line('experiments.discretization', argv)}`\n\nMachine: {machine()}\n\n"
            f"{args.n} samples from the same x0 per solver (clipped to [0, 1] for the classifier); digit classifier held-out accuracy {accuracy:.3f}.\n\n"
            f"Each figure with its 95 % sampling interval.\n\n{markdown_table(header, rows)}\n\n{floor_text}\n\n"
            f"- [{'x' if check else ' '}] W1⊕W2 deviates less than W1-only at h = 1: "
            f"{dev_h1['w1w2']:.4f} vs {dev_h1['w1']:.4f}\n\n![Figure 3](figure3.png)\n")
    write_results(args.out, results, text)


if __name__ == "__main__":
    main()
