"""Where to put few steps (issue "One step and all ten digits", design.md §7, §13): Euler at K = 2, 3, 5 steps
on the grids t_k = T(1 − (1 − k/K)^ρ), from early steps (ρ < 1) through the uniform grid (ρ = 1) to a long
first step and short late ones (ρ > 1), against Euler 1 and Dopri5, from the same x0.

    python -m experiments.step_grids --workdir runs/experiments/compare/mnist/main-seed0

Why: one step blends two digits where more steps jump between them (experiments.segments); the flow decides
late, where the field pulls to one digit. A late second evaluation reads the field where it has decided, and
the last step lands on that digit. Same samples and metrics as `experiments.compare` (1000 samples from the
evaluation's x0, PRNGKey(0); digits clipped to [0, 1]; each figure with its 95 % sampling interval).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from experiments.common import DIGIT_HEADER, RESULTS, command_line, digit_cells, digit_floor_text, digit_quality, \
    digit_rows_figure, machine, markdown_table, restore_digit_run, write_results
from w12_jax.classifier import load_or_train_classifier
from w12_jax.data import load_config_dataset
from w12_jax.evaluation import DOPRI5, measure_samplers, sampler_samples
from w12_jax.sample import generate

SHOWN_GRIDS = ("euler 1", "euler 2 ρ=1", "euler 2 ρ=3", "euler 5 ρ=1", "euler 5 ρ=3", DOPRI5[0])


def power_grid(T: float, steps: int, rho: float) -> tuple[float, ...]:
    """t_k = T(1 − (1 − k/K)^ρ), k = 0..K: uniform at ρ = 1; ρ > 1: a long first step, then shorter ones."""
    if steps < 1 or not rho > 0:
        raise ValueError(f"steps must be >= 1 and rho > 0, got {steps} and {rho}")
    k = np.arange(steps + 1) / steps
    return tuple(float(t) for t in T * (1.0 - (1.0 - k) ** rho))


def grid_samplers(T: float, nfes, rhos) -> list:
    """(label, sample kwargs): Euler 1, Euler at each K on each power grid, in that order."""
    out = [("euler 1", {"solver": "euler", "num_steps": 1})]
    for k in nfes:
        out += [(f"euler {k} ρ={rho:g}", {"solver": "euler", "ts": power_grid(T, k, rho)}) for rho in rhos]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a trained digit run (its checkpoints/ folder)")
    parser.add_argument("--nfe", nargs="+", type=int, default=[2, 3, 5], help="Euler steps K (K >= 2)")
    parser.add_argument("--rho", nargs="+", type=float, default=[0.5, 1.0, 2.0, 3.0, 4.0], help="grid powers ρ > 0")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--out", default=os.path.join(RESULTS, "step_grids"))
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if min(args.nfe) < 2 or min(args.rho) <= 0 or args.n < 2:
        raise SystemExit(f"--nfe must be >= 2, --rho > 0 and --n >= 2, got {args.nfe}, {args.rho} and {args.n}")
    workdir = args.workdir.rstrip("/")
    state, cfg = restore_digit_run(workdir, "step_grids")
    classifier, accuracy = load_or_train_classifier()
    dataset = load_config_dataset(cfg)
    quality = digit_quality(classifier, accuracy, dataset)
    params = state.potential_ema
    x0, _ = generate(cfg, params, args.n, num_steps=1)  # the evaluation's x0 (seed 0), as compare draws it
    samplers = grid_samplers(cfg.T, args.nfe, args.rho)
    measured = measure_samplers(cfg, params, x0, samplers, DOPRI5, quality)
    grids = {label: kwargs.get("ts") for label, kwargs in samplers}
    rows = [[label, r["nfe"], " ".join(f"{t:.2f}" for t in grids[label]) if grids.get(label) else "–",
             *digit_cells(r), r["deviation"]] for label, r in measured["samplers"].items()]
    floor, floor_text = digit_floor_text(cfg, dataset, args.n)
    os.makedirs(args.out, exist_ok=True)
    shown = [(label, kwargs) for label, kwargs in samplers + [DOPRI5] if label in SHOWN_GRIDS]
    digit_rows_figure({"x0 0-7": sampler_samples(cfg, params, x0[:8], shown)}, [label for label, _ in shown],
                      os.path.join(args.out, "digits.png"))
    results = {"setup": {"workdir": workdir, "step": int(state.step), "n": args.n, "config": cfg.to_dict()},
               "grids": grids, "flow": measured["flow"], "samplers": measured["samplers"], "floor": floor}
    header = ["sampler", "NFE", "t_k", *DIGIT_HEADER, "deviation vs Dopri5"]
    text = (f"# Step grids: `{workdir}` (iteration {int(state.step)})\n\n"
            f"Command: `{command_line('experiments.step_grids', argv)}`\n\nMachine: {machine()}\n\n"
            f"Euler on t_k = T(1 − (1 − k/K)^ρ); {args.n} samples from the same x0 per sampler (clipped to [0, 1] "
            f"for the digit classifier), each figure with its 95 % sampling interval; deviation: mean|x_T − "
            f"x_T^Dopri5| over the mean distance between independent samples.\n\n{markdown_table(header, rows)}\n\n"
            f"{floor_text}\n\n![digits](digits.png)\n")
    write_results(args.out, results, text)


if __name__ == "__main__":
    main()
